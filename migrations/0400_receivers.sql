-- Receivers (issue 15): a configured channel instance owned by the platform or by one tenant.
-- `channel_configs` held one platform-wide row per channel type, which any admin key, a
-- tenant-scoped one included, could point at itself and so receive every tenant's alerts.
-- Its rows become the platform's receivers, named after their channel type (what the rule
-- files' routing names); a tenant's receivers carry its id and a name of the tenant's choice,
-- and only ever get that tenant's alerts (notifier/decide.py).
ALTER TABLE channel_configs RENAME TO receivers;
ALTER TABLE receivers ADD COLUMN tenant_id text NOT NULL DEFAULT '';
ALTER TABLE receivers ADD COLUMN name text;
UPDATE receivers SET name = channel;
ALTER TABLE receivers ALTER COLUMN name SET NOT NULL;
ALTER TABLE receivers DROP CONSTRAINT channel_configs_pkey;
ALTER TABLE receivers ADD PRIMARY KEY (tenant_id, name);
-- the platform's receivers are one per channel type, named after it
ALTER TABLE receivers ADD CONSTRAINT receivers_platform_name
    CHECK (tenant_id <> '' OR name = channel);
ALTER TABLE receivers ADD CONSTRAINT receivers_name
    CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$');
-- who last configured it (API key id and name), as in audit_log
ALTER TABLE receivers ADD COLUMN updated_by jsonb;

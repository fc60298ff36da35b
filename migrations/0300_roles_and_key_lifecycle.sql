-- Roles and key lifecycle (issue 15): a `responder` role between viewer and admin (it may
-- acknowledge and resolve alerts), an optional expiry per key, and when a key was last used
-- (written at most about once a minute per key, not per request).
ALTER TABLE api_keys DROP CONSTRAINT IF EXISTS api_keys_role_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check
    CHECK (role IN ('admin', 'responder', 'viewer'));
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;
ALTER TABLE api_keys ADD COLUMN last_used_at timestamptz;
-- When the secret was last replaced by `qesmon keys rotate` (NULL: never rotated).
ALTER TABLE api_keys ADD COLUMN rotated_at timestamptz;

-- Who changed the notification setup through the API: channel configured, test message sent.
-- (Acknowledge and resolve are recorded with the alert, in alert_events.) Rare admin actions,
-- kept like alert history.
CREATE TABLE audit_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    action text NOT NULL,
    target text NOT NULL DEFAULT '',
    key_id bigint,
    key_name text NOT NULL DEFAULT '',
    tenant_id text,
    details jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_at ON audit_log (at);

-- Users per tenant, hour and day (issue 16, cold reads): for every final hour of the last two
-- days and every day of the day tier, the merge of the rows of each tenant's series that saw
-- users, written by `qesmon maintain` (a day's in the transaction that writes the day's rows).
-- Distinct users over a period (daily active users of a year, MAU, today's hours) then read a
-- row per tenant and hour or day instead of one per series (a year of 370 series with users was
-- 134,680 rows and 530 MB of sketches). A reader uses a bucket's rows here only when
-- `tenant_users_done` names it (else it merges the rollups itself); `done.at` tells a later
-- change of the bucket's rollups (a backfill), which the next pass counts again. Kept for the
-- day tier's retention (days) and two days (hours).
CREATE TABLE tenant_users (
    width_s integer NOT NULL CHECK (width_s IN (3600, 86400)),
    bucket timestamptz NOT NULL,
    tenant_id text NOT NULL,
    sketch bytea NOT NULL,
    PRIMARY KEY (width_s, bucket, tenant_id)
);
CREATE TABLE tenant_users_done (
    width_s integer NOT NULL CHECK (width_s IN (3600, 86400)),
    bucket timestamptz NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (width_s, bucket)
);

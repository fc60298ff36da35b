-- Users per tenant and day (issue 16, cold reads): for every day of the day tier, the merge of
-- the day rows of each tenant's series that saw users, written by `qesmon maintain` in the
-- transaction that writes the day's rows. Distinct users over long periods (daily active users
-- of a year, MAU) then read a row per tenant and day instead of one per series and day (a year
-- of 370 series with users was 134,680 rows and 530 MB of sketches). A reader uses a day's rows
-- here only when `day_users_done` names the day (else it merges the day rows itself). Kept as
-- long as the day tier (RETENTION_1D).
CREATE TABLE day_users (
    day timestamptz NOT NULL,
    tenant_id text NOT NULL,
    sketch bytea NOT NULL,
    PRIMARY KEY (day, tenant_id)
);
CREATE TABLE day_users_done (
    day timestamptz PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now()
);

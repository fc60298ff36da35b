-- Rollup tiers (issue 16): one hypertable per window width, so that each width's old rows
-- leave by dropping whole chunks (drop_chunks, Apache edition) instead of DELETE. All widths
-- shared `metric_rollups` (1-day chunks holding 10 s, 1 min and 1 h rows together), so no chunk
-- could ever be dropped without losing the longer-lived widths.
--
--   metric_rollups_10s   the base windows (WINDOW_SECONDS, 10 s by default; any width < 60 s)
--   metric_rollups_1m    1 min windows                 written by the pipeline
--   metric_rollups_1h    1 h windows                   written by the pipeline
--   metric_rollups_1d    1 day (UTC) windows           merged from the hour rows by `qesmon maintain`
--
-- Each keeps the columns and primary key of `metric_rollups`, with a CHECK on width_s: a query
-- on the view `metric_rollups` (below: UNION ALL of the four) that names a width reads only the
-- tier that can hold it (constraint exclusion on UNION ALL branches). Chunk intervals are an
-- eighth to a twelfth of each tier's default retention (12 h, 4 d, 90 d, 3 y: qesmon/settings.py),
-- so a tier holds at most one chunk beyond its retention (set_chunk_time_interval changes them
-- for new chunks, should a retention change a lot).

CREATE TABLE metric_rollups_10s (
    bucket timestamptz NOT NULL,
    width_s integer NOT NULL CHECK (width_s > 0 AND width_s < 60),
    series_id bigint NOT NULL,
    count bigint NOT NULL,
    errors bigint NOT NULL,
    sum double precision NOT NULL,
    min double precision NOT NULL,
    max double precision NOT NULL,
    p50 double precision,
    p95 double precision,
    p99 double precision,
    distinct_users bigint NOT NULL DEFAULT 0,
    sketch bytea,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (series_id, width_s, bucket)
);
CREATE TABLE metric_rollups_1m (LIKE metric_rollups_10s INCLUDING DEFAULTS INCLUDING INDEXES);
ALTER TABLE metric_rollups_1m ADD CHECK (width_s = 60);
CREATE TABLE metric_rollups_1h (LIKE metric_rollups_10s INCLUDING DEFAULTS INCLUDING INDEXES);
ALTER TABLE metric_rollups_1h ADD CHECK (width_s = 3600);
-- a day row's updated_at is the newest updated_at of the hour rows it was merged from, so a
-- later change of one of them (a backfill) is seen by comparing the two
CREATE TABLE metric_rollups_1d (LIKE metric_rollups_10s INCLUDING DEFAULTS INCLUDING INDEXES);
ALTER TABLE metric_rollups_1d ADD CHECK (width_s = 86400);

SELECT create_hypertable('metric_rollups_10s', by_range('bucket', INTERVAL '1 hour'),
                         create_default_indexes => false);
SELECT create_hypertable('metric_rollups_1m', by_range('bucket', INTERVAL '12 hours'),
                         create_default_indexes => false);
SELECT create_hypertable('metric_rollups_1h', by_range('bucket', INTERVAL '7 days'),
                         create_default_indexes => false);
SELECT create_hypertable('metric_rollups_1d', by_range('bucket', INTERVAL '90 days'),
                         create_default_indexes => false);
-- "everything in a time range" scans and the newest bucket of a width (api/store.py)
CREATE INDEX metric_rollups_10s_bucket ON metric_rollups_10s (bucket DESC);
CREATE INDEX metric_rollups_1m_bucket ON metric_rollups_1m (bucket DESC);
CREATE INDEX metric_rollups_1h_bucket ON metric_rollups_1h (bucket DESC);
CREATE INDEX metric_rollups_1d_bucket ON metric_rollups_1d (bucket DESC);
-- the hour rows changed since the last pass of `qesmon maintain` (their days are merged again)
CREATE INDEX metric_rollups_1h_updated ON metric_rollups_1h (updated_at);

-- Carry the existing rows over (one pass over the old table per tier; on a large database this
-- takes a while and needs the old table's size again in free disk until the DROP below).
INSERT INTO metric_rollups_10s SELECT * FROM metric_rollups WHERE width_s < 60;
INSERT INTO metric_rollups_1m SELECT * FROM metric_rollups WHERE width_s = 60;
INSERT INTO metric_rollups_1h SELECT * FROM metric_rollups WHERE width_s = 3600;

-- The readers' relation, under the old name: every tier, each branch excluded by its CHECK
-- when the query names another width.
CREATE VIEW metric_rollups_tiers AS
SELECT bucket, width_s, series_id, count, errors, sum, min, max, p50, p95, p99, distinct_users,
       sketch, updated_at FROM metric_rollups_10s
UNION ALL
SELECT bucket, width_s, series_id, count, errors, sum, min, max, p50, p95, p99, distinct_users,
       sketch, updated_at FROM metric_rollups_1m
UNION ALL
SELECT bucket, width_s, series_id, count, errors, sum, min, max, p50, p95, p99, distinct_users,
       sketch, updated_at FROM metric_rollups_1h
UNION ALL
SELECT bucket, width_s, series_id, count, errors, sum, min, max, p50, p95, p99, distinct_users,
       sketch, updated_at FROM metric_rollups_1d;

-- metrics_rollup (DESIGN.md) is replaced in place, so the grants on it (grafana_reader) stay;
-- it now has the day tier's rows too (width_s 86400).
CREATE OR REPLACE VIEW metrics_rollup AS
SELECT r.bucket,
       r.width_s,
       s.name,
       s.type,
       NULLIF(s.tenant_id, '') AS tenant_id,
       s.labels,
       r.count,
       r.errors,
       r.sum,
       r.min,
       r.max,
       CASE WHEN r.count > 0 THEN r.sum / r.count END AS avg,
       r.p50,
       r.p95,
       r.p99,
       r.distinct_users
FROM metric_rollups_tiers r
JOIN series s ON s.id = r.series_id;

DROP TABLE metric_rollups;
ALTER VIEW metric_rollups_tiers RENAME TO metric_rollups;

-- When the pipeline's writer last looked the series up (it does again at least hourly while it
-- writes: qesmon/tiers.py SERIES_RECHECK_SECONDS). `qesmon maintain` deletes a series only when
-- this is older than the longest tier's retention and no tier holds a row of it, so the
-- writer never keeps writing under the id of a deleted series.
ALTER TABLE series ADD COLUMN resolved_at timestamptz NOT NULL DEFAULT now();

-- The last pass of `qesmon maintain` (one row): what it did, for /health and the operator, and
-- how far the day tier has been merged.
CREATE TABLE maintenance (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    ok boolean NOT NULL,
    error text,
    summary jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- every day before this had its day rows merged (days after it are not final yet)
    days_final_before timestamptz,
    -- hour rows updated after this are looked at again (a backfill of a final day)
    hours_checked_since timestamptz
);

-- Indexes the bounded tables' deletes use (a pass deletes in batches, oldest first).
CREATE INDEX alerts_resolved ON alerts (resolved_at) WHERE state = 'resolved';
CREATE INDEX deliveries_created ON deliveries (created_at);
CREATE INDEX notifier_outbox_done ON notifier_outbox (created_at) WHERE status <> 'pending';
CREATE INDEX notifier_seen_transitions_seen ON notifier_seen_transitions (seen_at);

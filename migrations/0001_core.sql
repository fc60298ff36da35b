-- Core schema: series, rollups hypertable, the metrics_rollup view, alerts, deliveries, API keys.
-- Works on the Apache-licensed TimescaleDB build (hypertables, time_bucket, drop_chunks only).

CREATE EXTENSION IF NOT EXISTS timescaledb;

-- One row per series: metric name + type + tenant + label set. jsonb equality ignores key order.
CREATE TABLE series (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    type text NOT NULL,
    tenant_id text NOT NULL DEFAULT '',
    labels jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (name, type, tenant_id, labels)
);
CREATE INDEX series_labels_gin ON series USING gin (labels jsonb_path_ops);
CREATE INDEX series_tenant ON series (tenant_id, name);

-- Windowed aggregates written by the pipeline, one row per series, window width and window.
-- Rows are replaced whole on conflict, so a replay after a crash never double counts.
-- kll/hll hold the mergeable sketches (datasketches serialisation, or an exact sample for
-- small windows, see qesmon/sketch.py) so that longer periods and group_by merges are exact
-- merges, never averages of percentiles.
CREATE TABLE metric_rollups (
    bucket timestamptz NOT NULL,
    width_s integer NOT NULL CHECK (width_s > 0),
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
SELECT create_hypertable('metric_rollups', by_range('bucket', INTERVAL '1 day'),
                         create_default_indexes => false);
CREATE INDEX metric_rollups_width_bucket ON metric_rollups (width_s, bucket DESC);

-- The stable view Grafana and SQL users rely on (DESIGN.md). tenant_id is NULL when none.
CREATE VIEW metrics_rollup AS
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
FROM metric_rollups r
JOIN series s ON s.id = r.series_id;

-- One row per alert episode: from pending through firing to resolved. At most one open
-- (not resolved) episode per fingerprint (rule id + the labels of the series or group).
CREATE TABLE alerts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    fingerprint text NOT NULL,
    rule_id text NOT NULL,
    rule_name text NOT NULL,
    severity text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    state text NOT NULL CHECK (state IN ('pending', 'firing', 'resolved')),
    tenant_id text NOT NULL DEFAULT '',
    labels jsonb NOT NULL DEFAULT '{}'::jsonb,
    annotations jsonb NOT NULL DEFAULT '{}'::jsonb,
    value double precision,
    started_at timestamptz NOT NULL,
    fired_at timestamptz,
    resolved_at timestamptz,
    acknowledged_at timestamptz,
    acknowledged_by text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX alerts_one_open_per_fingerprint ON alerts (fingerprint)
    WHERE state <> 'resolved';
CREATE INDEX alerts_state ON alerts (state, severity);
CREATE INDEX alerts_tenant ON alerts (tenant_id, started_at DESC);

-- Every state transition. (fingerprint, to_state, at) identifies a transition, so a pipeline
-- replay that emits it again is absorbed by the unique key. `at` is the event time of the
-- window that caused it.
CREATE TABLE alert_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id bigint REFERENCES alerts (id) ON DELETE CASCADE,
    fingerprint text NOT NULL,
    from_state text NOT NULL,
    to_state text NOT NULL,
    at timestamptz NOT NULL,
    value double precision,
    details jsonb NOT NULL DEFAULT '{}'::jsonb,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (fingerprint, to_state, at)
);
CREATE INDEX alert_events_alert ON alert_events (alert_id, at);

-- Every delivery attempt of every notification, successful or not.
CREATE TABLE deliveries (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id bigint REFERENCES alerts (id) ON DELETE SET NULL,
    notification_key text NOT NULL,
    channel text NOT NULL,
    attempt integer NOT NULL,
    status text NOT NULL CHECK (status IN ('sent', 'failed', 'retrying', 'given_up')),
    http_status integer,
    latency_ms double precision,
    error text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deliveries_alert ON deliveries (alert_id, created_at);
CREATE INDEX deliveries_key ON deliveries (notification_key, channel);

-- Channel configuration set through the API (environment variables are the other source).
-- Secrets are stored as given (`${ENV}` references stay references).
CREATE TABLE channel_configs (
    channel text PRIMARY KEY,
    enabled boolean NOT NULL DEFAULT true,
    config jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- API keys, stored as SHA-256 of the key; the key itself is shown once at creation.
CREATE TABLE api_keys (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL DEFAULT '',
    key_prefix text NOT NULL,
    key_hash text NOT NULL UNIQUE,
    role text NOT NULL CHECK (role IN ('admin', 'viewer')),
    tenant_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- Grafana's read-only database role: SELECT on what the dashboards read, nothing else
-- (no api_keys, no receivers: those hold key hashes and channel secrets).
--
-- Run with psql after `qesmon migrate` (docker-compose.yml does, as the grafana-db-reader
-- service); idempotent, so it runs on every start and picks up a changed password:
--
--   GRAFANA_DB_PASSWORD=... psql -v ON_ERROR_STOP=1 -v reader=grafana_reader \
--       -f grafana/sql/grafana_reader.sql "$DATABASE_URL"
--
-- The role is also read-only by default (default_transaction_read_only) and its queries are
-- cut off after 30 s, since Grafana sends whatever SQL a dashboard editor typed.
\set ON_ERROR_STOP on
\getenv reader_password GRAFANA_DB_PASSWORD
\if :{?reader_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'GRAFANA_DB_PASSWORD is not set'; END $$;
\endif

SELECT format('CREATE ROLE %I LOGIN', :'reader')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'reader') \gexec

ALTER ROLE :"reader" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT
    PASSWORD :'reader_password';
ALTER ROLE :"reader" SET default_transaction_read_only = on;
ALTER ROLE :"reader" SET statement_timeout = '30s';

GRANT CONNECT ON DATABASE :"DBNAME" TO :"reader";
GRANT USAGE ON SCHEMA public TO :"reader";
GRANT SELECT ON metrics_rollup, series, alerts, alert_events, deliveries TO :"reader";

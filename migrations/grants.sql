-- What each of our processes may do in the database (issue 15): the roles qesmon_pipeline,
-- qesmon_notifier and qesmon_api (scripts/pg-roles.sql creates them with their passwords).
--
-- `qesmon migrate` applies this file after the numbered migrations, every time (also when no
-- migration was pending), in one transaction, when the three roles exist. It is declarative:
-- everything the roles held is revoked first, then granted as written here, so a privilege
-- taken out of this file is gone after the next `qesmon migrate`. There are no default
-- privileges: a table added by a new migration is out of every process's reach until it is
-- named here, and tests/ops/test_db_roles.py fails while a table or view of the schema is not
-- (tables no process may touch are named in the REVOKE at the end).
--
-- Hypertables (the rollup tiers): TimescaleDB applies GRANT and REVOKE on a hypertable to its
-- chunks and gives a new chunk the hypertable's privileges, whoever's insert creates it (the
-- chunk is owned by the hypertable's owner). Identity columns need no sequence privilege:
-- INSERT on the table is enough. Views are read with their owner's privileges, so SELECT on a
-- view does not open the tables under it.
--
-- Who keeps the owner's URL (DATABASE_URL): `qesmon migrate`, `qesmon maintain` (retention:
-- drop_chunks, deletes, the day tier), `qesmon keys` (the only writer of API keys), `qesmon up`
-- itself and the demo.

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM qesmon_pipeline, qesmon_notifier, qesmon_api;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM qesmon_pipeline, qesmon_notifier, qesmon_api;
REVOKE ALL ON SCHEMA public FROM qesmon_pipeline, qesmon_notifier, qesmon_api;
-- PostgreSQL before 15 let everyone create objects in public; nobody but the owner may.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO qesmon_pipeline, qesmon_notifier, qesmon_api;

-- Connect to this database; the pipeline stages each rollup batch in a temporary table.
DO $$
BEGIN
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM qesmon_pipeline, qesmon_notifier, qesmon_api',
                   current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO qesmon_pipeline, qesmon_notifier, qesmon_api',
                   current_database());
    EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO qesmon_pipeline', current_database());
END
$$;

-- The pipeline (pipeline/sinks.py, rules/store.py): series and the rollup tiers it writes
-- (upserts, which read the conflicting row), alert episodes and their transitions. The day tier
-- is written by `qesmon maintain`.
GRANT SELECT, INSERT, UPDATE ON series TO qesmon_pipeline;
GRANT SELECT, INSERT, UPDATE ON metric_rollups_10s, metric_rollups_1m, metric_rollups_1h
    TO qesmon_pipeline;
GRANT SELECT, INSERT, UPDATE ON alerts, alert_events TO qesmon_pipeline;

-- The notifier (notifier/service.py, store.py, outbox.py): reads the receivers and the alert
-- episodes (it opens one when the rule engine has not yet, and resolves), records its
-- transitions, outbox, episodes and timers, appends delivery attempts and acknowledgements.
GRANT SELECT ON receivers TO qesmon_notifier;
GRANT SELECT, INSERT, UPDATE ON alerts TO qesmon_notifier;
GRANT INSERT ON alert_events TO qesmon_notifier;
GRANT SELECT, INSERT ON notifier_seen_transitions TO qesmon_notifier;
GRANT SELECT, INSERT, UPDATE ON notifier_outbox, notifier_episodes, notifier_timers
    TO qesmon_notifier;
GRANT INSERT ON deliveries TO qesmon_notifier;

-- The API (api/, and notifier/actions.py for acknowledge, resolve, receivers and tests): reads
-- the rollups, series, alerts and what /health shows; authenticates keys and stamps their
-- last use, and nothing else of api_keys (keys are made by `qesmon keys` with the owner's URL);
-- acknowledges and resolves (alerts, their events, timers, episodes, outbox), configures and
-- deletes receivers, sends test messages (deliveries) and records who did (audit_log), keeps
-- the exporter's running totals.
GRANT SELECT ON series, metric_rollups_10s, metric_rollups_1m, metric_rollups_1h,
    metric_rollups_1d, metric_rollups, maintenance, tenant_users, tenant_users_done TO qesmon_api;
GRANT SELECT, UPDATE ON alerts TO qesmon_api;
GRANT INSERT ON alert_events, audit_log TO qesmon_api;
GRANT SELECT, UPDATE ON notifier_timers TO qesmon_api;
GRANT SELECT, INSERT, UPDATE ON notifier_episodes TO qesmon_api;
GRANT SELECT, INSERT ON notifier_outbox TO qesmon_api;
GRANT SELECT, INSERT ON deliveries TO qesmon_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON receivers TO qesmon_api;
GRANT SELECT, UPDATE (last_used_at) ON api_keys TO qesmon_api;
-- the exporter's running totals, read at start and carried forward (api/exporter.py)
GRANT SELECT, INSERT, UPDATE ON exporter_state TO qesmon_api;

-- No process: the migrations' record, Grafana's view (grafana/sql/grafana_reader.sql grants it
-- to grafana_reader).
REVOKE ALL ON schema_migrations, metrics_rollup FROM qesmon_pipeline, qesmon_notifier, qesmon_api;

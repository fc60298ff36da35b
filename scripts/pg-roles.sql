-- The database roles of our processes, each logging in with its own password:
-- qesmon_pipeline, qesmon_notifier and qesmon_api. What each may do is migrations/grants.sql,
-- which `qesmon migrate` applies once these roles exist: run this first, then `qesmon migrate`.
-- scripts/setup.sh runs it on the private PostgreSQL (passwords from var/secrets/pg-*), and
-- docker-compose.yml's db-roles service before its migrate (passwords from .env):
--
--   POSTGRES_PIPELINE_PASSWORD=... POSTGRES_NOTIFIER_PASSWORD=... POSTGRES_API_PASSWORD=... \
--       psql -v ON_ERROR_STOP=1 -f scripts/pg-roles.sql "$DATABASE_URL"
--
-- As a role that may create roles (a superuser in both set-ups; CREATEROLE is enough), with
-- psql 15 or newer (\getenv). Idempotent: a missing role is created, and every run sets each
-- role's attributes and password again (a changed password applies to new connections).
-- Passwords: at least 16 characters, stored as SCRAM-SHA-256, never on a command line.
\set ON_ERROR_STOP on
\getenv pipeline_password POSTGRES_PIPELINE_PASSWORD
\getenv notifier_password POSTGRES_NOTIFIER_PASSWORD
\getenv api_password POSTGRES_API_PASSWORD
\if :{?pipeline_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'POSTGRES_PIPELINE_PASSWORD is not set'; END $$;
\endif
\if :{?notifier_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'POSTGRES_NOTIFIER_PASSWORD is not set'; END $$;
\endif
\if :{?api_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'POSTGRES_API_PASSWORD is not set'; END $$;
\endif
SELECT least(length(:'pipeline_password'), length(:'notifier_password'),
             length(:'api_password')) >= 16 AS long_enough \gset
\if :long_enough
\else
DO $$ BEGIN RAISE EXCEPTION 'POSTGRES_{PIPELINE,NOTIFIER,API}_PASSWORD: at least 16 characters each'; END $$;
\endif

SELECT format('CREATE ROLE %I', role)
FROM unnest(ARRAY['qesmon_pipeline', 'qesmon_notifier', 'qesmon_api']) AS role
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role) \gexec

-- Nothing but logging in: no role or database making, and nothing inherited should someone
-- grant one of them a role. Not superuser, replication or bypassing row security either: the
-- defaults of CREATE ROLE, which only a superuser can change (so they are not repeated here,
-- and a database owner with CREATEROLE can run this file).
SET password_encryption = 'scram-sha-256';
ALTER ROLE qesmon_pipeline WITH LOGIN NOCREATEDB NOCREATEROLE NOINHERIT
    PASSWORD :'pipeline_password';
ALTER ROLE qesmon_notifier WITH LOGIN NOCREATEDB NOCREATEROLE NOINHERIT
    PASSWORD :'notifier_password';
ALTER ROLE qesmon_api WITH LOGIN NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD :'api_password';

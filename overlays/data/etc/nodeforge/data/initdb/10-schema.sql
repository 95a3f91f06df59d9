-- DataCore's schema and its API roles, from seed 001 ("Database Security
-- (PostgREST on DataCore)"). The data stack mounts this directory on the
-- postgres container's /docker-entrypoint-initdb.d, which the postgres image
-- runs once, on a new data directory, as the superuser ($POSTGRES_USER) in
-- $POSTGRES_DB (aerovista); *.sql through psql with ON_ERROR_STOP, in name
-- order (postgres image docs, "Initialization scripts"; checked 16.4).
-- 20-logins.sh then adds the login roles whose passwords are stack secrets.
--
-- The API is schema `api`, the one schema PostgREST exposes
-- (PGRST_DB_SCHEMAS=api), as PostgREST's docs advise: the API holds views
-- and functions only, the table stays in `public`, out of the API
-- (PostgREST v12.2 docs, tutorial 0 and "Schema Isolation"). The seed's URLs
-- are unchanged: /rpc/get_recent_activity and /activity_summary.

-- The seed's table: activity events, queried by n8n as
-- "SELECT * FROM activity_logs ORDER BY created_at DESC LIMIT 100" and by
-- the view and function below (created_at, event_type). `details` holds an
-- event's own data (the part the seed keeps out of the API: "no PII").
CREATE TABLE public.activity_logs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    event_type text NOT NULL,
    details jsonb
);
CREATE INDEX activity_logs_created_at ON public.activity_logs (created_at);

-- PostgREST's anonymous role (PGRST_DB_ANON_ROLE): no login; 20-logins.sh
-- grants it to the `authenticator` PostgREST logs in as. It may use the
-- API schema, read the summary view and call get_recent_activity; nothing
-- in `public` (the raw rows) is granted to it.
CREATE ROLE web_anon NOLOGIN;

-- Owner of the API's view and function: reads activity_logs and nothing
-- else, so the API reads the table with no more than that (a view runs
-- with its owner's rights; the function is SECURITY DEFINER), and no
-- superuser object is reachable through PostgREST.
CREATE ROLE activity_api NOLOGIN;
GRANT SELECT ON public.activity_logs TO activity_api;

CREATE SCHEMA api;
GRANT USAGE ON SCHEMA api TO web_anon;

-- The seed's "safe view (no PII)": events per hour and type.
CREATE VIEW api.activity_summary AS
  SELECT
    date_trunc('hour', created_at) AS hour,
    event_type,
    count(*) AS event_count
  FROM public.activity_logs
  GROUP BY 1, 2;
ALTER VIEW api.activity_summary OWNER TO activity_api;
GRANT SELECT ON api.activity_summary TO web_anon;

-- The seed's RPC: events per type in the last `hours` hours. SECURITY
-- DEFINER so web_anon needs no right on the table (PostgREST v12.2 docs,
-- "Database Authorization: Security definer"); a fixed search_path and
-- schema-qualified names, as PostgreSQL's CREATE FUNCTION docs require of
-- a SECURITY DEFINER function ("Writing SECURITY DEFINER Functions
-- Safely", checked 16).
CREATE FUNCTION api.get_recent_activity(hours int DEFAULT 24)
RETURNS TABLE(event_type text, count bigint)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT a.event_type, count(*)
  FROM public.activity_logs AS a
  WHERE a.created_at > now() - interval '1 hour' * hours
  GROUP BY a.event_type
  ORDER BY 2 DESC;
$$;
ALTER FUNCTION api.get_recent_activity(int) OWNER TO activity_api;
-- Functions are executable by PUBLIC when created; only web_anon (and so
-- PostgREST) may call this one (PostgREST v12.2 docs, "Functions").
REVOKE EXECUTE ON FUNCTION api.get_recent_activity(int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.get_recent_activity(int) TO web_anon;

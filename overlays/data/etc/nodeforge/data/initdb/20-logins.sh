#!/bin/sh
# The login roles whose passwords are the data stack's secrets, run once by
# the postgres image's entrypoint after 10-schema.sql (an executable *.sh
# in /docker-entrypoint-initdb.d is run, with the server on its socket
# only; postgres image docs, "Initialization scripts", checked 16.4):
#   authenticator  PostgREST's login (PGRST_DB_URI): NOINHERIT, no rights of
#                  its own, may only become web_anon (PostgREST v12.2 docs,
#                  "Authentication: Overview of role system", tutorial 0);
#   n8n            owner of database n8n, where core's n8n keeps its data
#                  (seed 001 puts n8n on DataCore's PostgreSQL; the same
#                  N8N_DB_PASSWORD is in core's stack).
# The passwords come from the container's environment (the node's secrets
# file) and reach psql inside the here-document, on its standard input:
# never on a command line. printf is the shell's builtin.
set -eu

# $1 as the body of an SQL string literal ('' for ').
sql_literal() {
    printf '%s' "$1" | sed "s/'/''/g"
}

authenticator_pw=$(sql_literal "${POSTGREST_DB_PASSWORD:?POSTGREST_DB_PASSWORD is not set}")
n8n_pw=$(sql_literal "${N8N_DB_PASSWORD:?N8N_DB_PASSWORD is not set}")

psql -v ON_ERROR_STOP=1 --no-psqlrc -q --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE ROLE authenticator LOGIN NOINHERIT NOCREATEDB NOCREATEROLE NOSUPERUSER PASSWORD '$authenticator_pw';
GRANT web_anon TO authenticator;
CREATE ROLE n8n LOGIN PASSWORD '$n8n_pw';
CREATE DATABASE n8n OWNER n8n;
-- Only its owner (and the superuser) connects to n8n's database.
REVOKE ALL ON DATABASE n8n FROM PUBLIC;
SQL
unset authenticator_pw n8n_pw

//! The fleet test's database checks: real queries on data's PostgreSQL
//! from core, directly and through data's PgBouncer, and the seed's API
//! through PostgREST's roles.

use qemu_tests::stacks::{print_secret, Running};

use super::{N8N_DB_PASSWORD, POSTGRES_PASSWORD};

/// Real queries on data's PostgreSQL from core (core may reach every
/// port), directly and through data's PgBouncer: psql from Debian's
/// postgresql in core's Prometheus test image (the images share one
/// Debian layer), the password over stdin.
pub fn check_postgres_from_core(core: &Running) {
    let out = core.ssh.run_with_input(
        "sudo docker exec -i $(sudo docker ps -qf label=com.docker.compose.service=prometheus) \
         sh -c 'read -r PGPASSWORD; export PGPASSWORD; \
         $(ls -d /usr/lib/postgresql/*/bin)/psql -h datacore.tail79107c.ts.net \
         -U aerovista -d aerovista -tAc \"select current_database() || chr(32) || 6 * 7\"'",
        format!("{POSTGRES_PASSWORD}\n").as_bytes(),
    );
    eprintln!("fleet: core -> datacore:5432 psql: {}", out.trim());
    assert_eq!(out.trim(), "aerovista 42");
    // Through data's PgBouncer (6432, where seed 001 sends clients): the
    // server it relays to answers on 5432, inside data's stack.
    let out = core.ssh.run_with_input(
        "sudo docker exec -i $(sudo docker ps -qf label=com.docker.compose.service=prometheus) \
         sh -c 'read -r PGPASSWORD; export PGPASSWORD; \
         $(ls -d /usr/lib/postgresql/*/bin)/psql -h datacore.tail79107c.ts.net -p 6432 \
         -U aerovista -d aerovista -tAc \"select current_database() || chr(32) || inet_server_port()\"'",
        format!("{POSTGRES_PASSWORD}\n").as_bytes(),
    );
    eprintln!(
        "fleet: core -> datacore:6432 (PgBouncer) psql: {}",
        out.trim()
    );
    assert_eq!(
        out.trim(),
        "aerovista 5432",
        "the aerovista pool of data's PgBouncer"
    );
    // n8n's login, made by data's init script from the value both seeds
    // share, owns its database and reaches it as core's n8n does, through
    // PgBouncer's session pool: core's n8n can create its tables there.
    let out = core.ssh.run_with_input(
        "sudo docker exec -i $(sudo docker ps -qf label=com.docker.compose.service=prometheus) \
         sh -c 'read -r PGPASSWORD; export PGPASSWORD; \
         $(ls -d /usr/lib/postgresql/*/bin)/psql -h datacore.tail79107c.ts.net -p 6432 -U n8n -d n8n \
         -v ON_ERROR_STOP=1 -qtAc \"create table fleet_check(x int); drop table fleet_check; select current_user\"'",
        format!("{N8N_DB_PASSWORD}\n").as_bytes(),
    );
    assert_eq!(
        out.trim(),
        "n8n",
        "n8n's login on datacore through PgBouncer"
    );
}

/// The seed's API through PostgREST's roles on the real PostgreSQL: the
/// `authenticator` login (its password generated on the node, read from
/// the stack's secrets file into stdin) becomes `web_anon` and calls
/// `api.get_recent_activity`, which counts rows the superuser wrote;
/// `web_anon` itself may not read the raw table.
pub fn check_api_role(data: &Running) {
    let psql =
        "$(ls -d /usr/lib/postgresql/*/bin)/psql -h 127.0.0.1 -d aerovista -v ON_ERROR_STOP=1 -qtA";
    let container = "$(sudo docker ps -qf label=com.docker.compose.service=postgres)";
    // The password, then the SQL: psql reads what `read` left on stdin.
    data.ssh.run_with_input(
        &format!(
            "sudo docker exec -i {container} sh -c 'read -r PGPASSWORD; export PGPASSWORD; {psql} -U aerovista'"
        ),
        format!(
            "{POSTGRES_PASSWORD}\ninsert into activity_logs (event_type) values ('login'), ('login'), ('upload');\n"
        )
        .as_bytes(),
    );
    let as_api = |sql: &str| {
        data.ssh.output_with_input(
            &format!(
                "{} | sudo docker exec -i {container} sh -c 'read -r PGPASSWORD; export PGPASSWORD; \
                 {psql} -U authenticator -c \"set role web_anon\" -c \"{sql}\"' 2>&1",
                print_secret("data", "POSTGREST_DB_PASSWORD")
            ),
            b"",
        )
    };
    let out = as_api("select event_type || chr(32) || count from api.get_recent_activity(24)");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "fleet: api.get_recent_activity as web_anon: {}",
        text.trim().replace('\n', ", ")
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["login 2", "upload 1"],
        "{text}"
    );
    let out = as_api("select count(*) from public.activity_logs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("permission denied"),
        "web_anon read the raw table: {text}"
    );
}

//! Test images of the services Debian packages, served under the public
//! names the stacks use, so a boot test runs the role's configuration of
//! them for real: PostgreSQL (with pgvector), PgBouncer, Redis,
//! Prometheus, Alertmanager, postgres_exporter, nginx, MariaDB and
//! Syncthing.
//! On the same layer, STAND-INS for what Debian lacks but a boot test
//! must see work end to end: logs, with Grafana Alloy (a script that
//! follows the host's journal and pushes it where the stack's Alloy config
//! says) and Grafana Loki (a script that records pushes and answers
//! queries); and HashiCorp Vault's init/unseal/health API (a script), for
//! the first-boot unseal; qemu-tests/standins/debian-images/.
//!
//! One layer holds Debian trixie (minbase) with those packages, made once
//! by mmdebstrap and cached under target/; each public name is that layer
//! with its own entrypoint, so a node that runs several of them stores the
//! layer once. The versions are Debian's, not the tags' (trixie ships
//! PostgreSQL 17 where the stack names postgres:16.4, Prometheus 2.53
//! where it names v2.54.1, Redis 8 for 7.4.1): what is tested is the stack's configuration,
//! flags and wiring, which those versions accept alike.
//!
//! Services Debian does not package stay busybox stand-ins
//! (crate::stacks).

use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, Result};
use nodeforge::exec::Cmd;
use nodeforge::fsutil::sha256_bytes;
use nodeforge::oci::fixture::{layer_tar, TestImage};
use nodeforge::oci::Digest;

use crate::workspace_root;

/// The packages of the shared layer, per architecture: amd64's for the
/// x86-64 roles, arm64's for the sentinel (Raspberry Pi), which also
/// gives the arm64 busybox its stand-ins run (crate::stacks).
fn packages(arch: &str) -> &'static [&'static str] {
    match arch {
        "arm64" => &[
            "prometheus-blackbox-exporter",
            "busybox-static",
            // The log stand-ins: Python, and its journal reader.
            "python3",
            "python3-systemd",
        ],
        _ => &[
            "postgresql",
            "redis-server",
            "prometheus",
            "prometheus-alertmanager",
            "prometheus-postgres-exporter",
            "postgresql-17-pgvector",
            "nginx",
            "mariadb-server",
            "pgbouncer",
            "syncthing",
            "python3",
            "python3-systemd",
        ],
    }
}

/// mmdebstrap's hook: the official images' data directories, empty as
/// theirs are (a new volume starts from them; the entrypoints make the
/// cluster and system tables), nginx as the official image has it (no
/// Debian default site, logs to the container's output; its nginx.conf is
/// in the scripts layer), PgBouncer also where edoburu/pgbouncer has it
/// (/usr/bin), and out what no test runs, to keep the layer
/// small: promtool, PostgreSQL's JIT (LLVM, its bitcode; the entrypoint
/// turns `jit` off), the console libraries.
const CUSTOMIZE: &str = "rm -rf \"$1\"/var/lib/postgresql/* \"$1\"/etc/postgresql/* \
     \"$1\"/var/lib/mysql/* \
     \"$1\"/usr/bin/promtool \"$1\"/usr/lib/*-linux-gnu/libLLVM* \
     \"$1\"/usr/lib/*-linux-gnu/libz3* \"$1\"/usr/lib/postgresql/*/lib/bitcode \
     \"$1\"/usr/share/javascript; \
     mkdir -p \"$1\"/prometheus \"$1\"/alertmanager \"$1\"/var/lib/postgresql/data \"$1\"/data \"$1\"/loki; \
     if [ -x \"$1\"/usr/sbin/pgbouncer ]; then ln -sf /usr/sbin/pgbouncer \"$1\"/usr/bin/pgbouncer; fi; \
     if [ -d \"$1\"/etc/nginx ]; then rm -f \"$1\"/etc/nginx/sites-enabled/*; \
     ln -sf /dev/stdout \"$1\"/var/log/nginx/access.log; \
     ln -sf /dev/stderr \"$1\"/var/log/nginx/error.log; fi";

/// A public image name and how its container starts.
struct Provided {
    name: &'static str,
    /// The Debian package it runs, or the stand-in script's name.
    package: &'static str,
    entrypoint: &'static [&'static str],
    cmd: &'static [&'static str],
    /// The official image's own environment, beside PATH and LANG.
    env: &'static [&'static str],
}

const PROVIDED: &[Provided] = &[
    Provided {
        name: "postgres:16.4",
        package: "postgresql",
        entrypoint: &["/usr/local/bin/docker-entrypoint.sh"],
        cmd: &["postgres"],
        env: &[],
    },
    Provided {
        name: "redis:7.4.1",
        package: "redis-server",
        entrypoint: &[],
        cmd: &["redis-server"],
        env: &[],
    },
    Provided {
        name: "prom/prometheus:v2.54.1",
        package: "prometheus",
        entrypoint: &["/usr/bin/prometheus"],
        cmd: &[
            "--config.file=/etc/prometheus/prometheus.yml",
            "--storage.tsdb.path=/prometheus",
        ],
        env: &[],
    },
    Provided {
        name: "prom/alertmanager:v0.28.1",
        package: "prometheus-alertmanager",
        entrypoint: &["/usr/bin/prometheus-alertmanager"],
        cmd: &[
            "--config.file=/etc/alertmanager/alertmanager.yml",
            "--storage.path=/alertmanager",
        ],
        env: &[],
    },
    Provided {
        name: "quay.io/prometheuscommunity/postgres-exporter:v0.15.0",
        package: "prometheus-postgres-exporter",
        entrypoint: &["/usr/bin/prometheus-postgres-exporter"],
        cmd: &[],
        env: &[],
    },
    Provided {
        name: "pgvector/pgvector:0.7.4-pg16",
        package: "postgresql-17-pgvector",
        entrypoint: &["/usr/local/bin/docker-entrypoint.sh"],
        cmd: &["postgres"],
        env: &[],
    },
    // edoburu/pgbouncer runs /usr/bin/pgbouncer as its `postgres` user
    // (its Dockerfile's USER); PgBouncer refuses to run as root.
    Provided {
        name: "edoburu/pgbouncer:v1.23.1-p2",
        package: "pgbouncer",
        entrypoint: &[
            "setpriv",
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
        ],
        cmd: &["/usr/bin/pgbouncer", "/etc/pgbouncer/pgbouncer.ini"],
        env: &[],
    },
    Provided {
        name: "nginx:1.27.2-alpine",
        package: "nginx",
        entrypoint: &[],
        cmd: &["nginx", "-g", "daemon off;"],
        env: &[],
    },
    Provided {
        name: "mariadb:11.4.3",
        package: "mariadb-server",
        entrypoint: &["/usr/local/bin/mariadb-entrypoint.sh"],
        cmd: &["mariadbd"],
        env: &[],
    },
    Provided {
        name: "prom/blackbox-exporter:v0.25.0",
        package: "prometheus-blackbox-exporter",
        entrypoint: &["/usr/bin/prometheus-blackbox-exporter"],
        cmd: &["--config.file=/etc/blackbox_exporter/config.yml"],
        env: &[],
    },
    Provided {
        name: "grafana/alloy:v1.4.3",
        package: STAND_IN,
        entrypoint: &["/usr/local/bin/alloy-standin"],
        cmd: &["run", "/etc/alloy/config.alloy"],
        env: &[],
    },
    Provided {
        name: "grafana/loki:3.2.1",
        package: STAND_IN,
        entrypoint: &["/usr/local/bin/loki-standin"],
        cmd: &[],
        env: &[],
    },
    Provided {
        name: "hashicorp/vault:1.17.6",
        package: STAND_IN,
        entrypoint: &["/usr/local/bin/vault-standin"],
        cmd: &["server"],
        env: &[],
    },
    // syncthing/syncthing: its entrypoint script (as the image's, below)
    // and environment (Dockerfile, checked 1.27.12).
    Provided {
        name: "syncthing/syncthing:1.27.12",
        package: "syncthing",
        entrypoint: &["/bin/entrypoint.sh", "/bin/syncthing"],
        cmd: &[],
        env: &[
            "PUID=1000",
            "PGID=1000",
            "HOME=/var/syncthing",
            "STGUIADDRESS=0.0.0.0:8384",
            "STHOMEDIR=/var/syncthing/config",
        ],
    },
];

/// `package` of the images that run a stand-in script, not Debian's
/// build of the service.
const STAND_IN: &str = "stand-in";

/// The scripts of the layer above Debian's: the postgres entrypoint and
/// the log stand-ins.
fn scripts_layer() -> Result<Vec<u8>> {
    let dir = workspace_root().join("qemu-tests/standins/debian-images");
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
    };
    let (alloy, loki) = (read("alloy-standin")?, read("loki-standin")?);
    let vault = read("vault-standin")?;
    let syncthing = read("syncthing-entrypoint.sh")?;
    layer_tar(&[
        (
            "usr/local/bin/docker-entrypoint.sh",
            0o755,
            POSTGRES_ENTRYPOINT.as_bytes(),
        ),
        ("usr/local/bin/alloy-standin", 0o755, &alloy),
        ("usr/local/bin/loki-standin", 0o755, &loki),
        ("usr/local/bin/vault-standin", 0o755, &vault),
        // /bin/entrypoint.sh, as syncthing/syncthing has it (/bin is
        // /usr/bin on trixie).
        ("usr/bin/entrypoint.sh", 0o755, &syncthing),
        (
            "usr/local/bin/mariadb-entrypoint.sh",
            0o755,
            MARIADB_ENTRYPOINT.as_bytes(),
        ),
        (
            "usr/local/bin/healthcheck.sh",
            0o755,
            MARIADB_HEALTHCHECK.as_bytes(),
        ),
        (
            "etc/mysql/mariadb.conf.d/99-container.cnf",
            0o644,
            b"# Test image: listen as the official image does.\n[mariadbd]\nbind-address = 0.0.0.0\nskip-name-resolve\n",
        ),
        ("etc/nginx/nginx.conf", 0o644, NGINX_CONF.as_bytes()),
        ("etc/nginx/conf.d/default.conf", 0o644, NGINX_DEFAULT.as_bytes()),
        (
            "usr/share/nginx/html/index.html",
            0o644,
            b"<!doctype html><title>Welcome to nginx!</title>\n",
        ),
    ])
}

/// What the official mariadb image's entrypoint does that a stack relies
/// on: a new data directory gets the system tables, root with
/// $MARIADB_ROOT_PASSWORD (local and remote), $MARIADB_DATABASE and
/// $MARIADB_USER/$MARIADB_PASSWORD with all rights on it, the
/// `healthcheck` user and its /var/lib/mysql/.my-healthcheck.cnf, and the
/// *.sql of /docker-entrypoint-initdb.d, on a server without networking;
/// then mariadbd runs as `mysql`. Values go over stdin, never argv.
const MARIADB_ENTRYPOINT: &str = r#"#!/bin/sh
# Test image (nodeforge qemu-tests): Debian's MariaDB started the way the
# official image's docker-entrypoint.sh starts it.
set -eu
if [ "${1:-}" != mariadbd ]; then exec "$@"; fi
shift
sock=/run/mysqld/mysqld.sock
mkdir -p /run/mysqld /var/lib/mysql
chown mysql:mysql /run/mysqld /var/lib/mysql
if [ ! -d /var/lib/mysql/mysql ]; then
    root_pw=${MARIADB_ROOT_PASSWORD:-${MYSQL_ROOT_PASSWORD:?MARIADB_ROOT_PASSWORD is not set}}
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db \
        --auth-root-authentication-method=normal >/dev/null
    mariadbd --user=mysql --skip-networking --socket="$sock" &
    pid=$!
    i=0
    until mariadb-admin --socket="$sock" ping >/dev/null 2>&1; do
        i=$((i + 1)); [ "$i" -lt 120 ] || { echo "mariadbd did not start" >&2; exit 1; }
        sleep 1
    done
    hc_pw=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    # printf, not echo: dash's echo would eat the backslashes.
    sql() { printf '%s\n' "$1"; }
    q() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e "s/'/''/g"; }
    {
        sql "ALTER USER 'root'@'localhost' IDENTIFIED BY '$(q "$root_pw")';"
        sql "CREATE USER 'root'@'%' IDENTIFIED BY '$(q "$root_pw")';"
        sql "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
        sql "CREATE USER 'healthcheck'@'localhost' IDENTIFIED BY '$hc_pw';"
        sql "CREATE USER 'healthcheck'@'127.0.0.1' IDENTIFIED BY '$hc_pw';"
        if [ -n "${MARIADB_DATABASE:-}" ]; then
            sql "CREATE DATABASE IF NOT EXISTS \`$MARIADB_DATABASE\`;"
        fi
        if [ -n "${MARIADB_USER:-}" ]; then
            sql "CREATE USER '$MARIADB_USER'@'%' IDENTIFIED BY '$(q "${MARIADB_PASSWORD:-}")';"
            [ -z "${MARIADB_DATABASE:-}" ] ||
                sql "GRANT ALL ON \`$MARIADB_DATABASE\`.* TO '$MARIADB_USER'@'%';"
        fi
    } | mariadb --socket="$sock" -uroot
    umask 077
    printf '[mariadb-client]\nport=3306\nsocket=%s\nuser=healthcheck\npassword=%s\n' \
        "$sock" "$hc_pw" >/var/lib/mysql/.my-healthcheck.cnf
    chown mysql:mysql /var/lib/mysql/.my-healthcheck.cnf
    for f in /docker-entrypoint-initdb.d/*.sql; do
        [ -e "$f" ] || continue
        echo "running $f"
        MYSQL_PWD="$root_pw" mariadb --socket="$sock" -uroot ${MARIADB_DATABASE:+"$MARIADB_DATABASE"} <"$f"
    done
    MYSQL_PWD="$root_pw" mariadb-admin --socket="$sock" -uroot shutdown
    wait "$pid"
    echo "MariaDB initialised in /var/lib/mysql"
fi
exec mariadbd --user=mysql "$@"
"#;

/// The official mariadb image's healthcheck.sh: the two checks stacks use.
const MARIADB_HEALTHCHECK: &str = r#"#!/bin/sh
# Test image (nodeforge qemu-tests): the official image's healthcheck.sh,
# its --connect and --innodb_initialized tests, as its healthcheck user.
set -eu
cnf=/var/lib/mysql/.my-healthcheck.cnf
for a in "$@"; do
    case "$a" in
        --connect) mariadb --defaults-extra-file="$cnf" -e 'select 1' >/dev/null ;;
        --innodb_initialized)
            [ "$(mariadb --defaults-extra-file="$cnf" -sNe "select 1 from information_schema.ENGINES where engine='innodb' and support in ('YES','DEFAULT','ENABLED')")" = 1 ] ;;
        *) echo "healthcheck.sh (test image): $a is not supported" >&2; exit 1 ;;
    esac
done
"#;

/// The official nginx image's nginx.conf (1.27): only conf.d/*.conf, no
/// sites; Debian's user www-data for the image's `nginx`.
const NGINX_CONF: &str = "# Test image (nodeforge qemu-tests): the official nginx image's layout.
user www-data;
worker_processes auto;
error_log /var/log/nginx/error.log notice;
pid /run/nginx.pid;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /var/log/nginx/access.log;
    sendfile on;
    keepalive_timeout 65;
    include /etc/nginx/conf.d/*.conf;
}
";

/// The official image's conf.d/default.conf (its IPv6 listener is added
/// by an entrypoint script only where the container has IPv6).
const NGINX_DEFAULT: &str = "server {
    listen 80;
    server_name localhost;
    location / {
        root /usr/share/nginx/html;
        index index.html index.htm;
    }
}
";

/// What the official postgres image's entrypoint does that the data stack
/// relies on: a new data directory gets a cluster owned by `postgres`,
/// the superuser $POSTGRES_USER with $POSTGRES_PASSWORD (SCRAM for TCP
/// clients), the database $POSTGRES_DB and the scripts of
/// /docker-entrypoint-initdb.d (*.sql through psql, *.sh run or sourced,
/// against a server on the socket only); then the server runs as `postgres`,
/// listening on every address of the container.
const POSTGRES_ENTRYPOINT: &str = r#"#!/bin/sh
# Test image (nodeforge qemu-tests): Debian's PostgreSQL started the way
# the official image's docker-entrypoint.sh starts it.
set -eu
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
export PATH="$bin:$PATH"
export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
if [ "${1:-}" != postgres ]; then exec "$@"; fi
shift
mkdir -p "$PGDATA" /run/postgresql
chown postgres:postgres "$PGDATA" /run/postgresql
chmod 0700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    user=${POSTGRES_USER:-postgres}
    db=${POSTGRES_DB:-$user}
    pwfile=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is not set}" >"$pwfile"
    chown postgres "$pwfile"
    as_postgres initdb -D "$PGDATA" --username="$user" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    echo "jit = off" >>"$PGDATA/postgresql.conf"
    # As the official image: a server on the socket only while
    # /docker-entrypoint-initdb.d runs (*.sql through psql as the
    # superuser into $POSTGRES_DB, *.sh run or sourced), then stopped.
    as_postgres pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c jit=off" -w start >/dev/null
    export PGUSER="$user" PGDATABASE=postgres PGHOST=/run/postgresql
    export POSTGRES_USER="$user" POSTGRES_DB="$db"
    if [ "$db" != postgres ]; then
        psql -v ON_ERROR_STOP=1 --no-psqlrc -q -c "CREATE DATABASE \"$db\";"
    fi
    export PGDATABASE="$db"
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sql) echo "running $f"; psql -v ON_ERROR_STOP=1 --no-psqlrc -q -f "$f" ;;
            *.sh) echo "running $f"; if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;
            *) [ -e "$f" ] && echo "ignoring $f" ;;
        esac
    done
    unset PGUSER PGDATABASE PGHOST
    as_postgres pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    # initdb synced what it wrote, not the lines added here: a machine
    # switched off now would start with a torn postgresql.conf.
    sync "$PGDATA/postgresql.conf" "$PGDATA/pg_hba.conf"
    echo "PostgreSQL initialised in $PGDATA"
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" "$@"
"#;

/// The image made on Debian's layer for public `name`, or `None` where
/// there is none (a busybox stand-in is used instead).
pub fn image(name: &str) -> Result<Option<TestImage>> {
    image_for("amd64", name)
}

/// [`image`] for `arch` (`amd64`, `arm64`): `None` also where that
/// architecture's layer lacks the package.
pub fn image_for(arch: &str, name: &str) -> Result<Option<TestImage>> {
    let Some(p) = PROVIDED
        .iter()
        .find(|p| p.name == name)
        .filter(|p| p.package == STAND_IN || packages(arch).contains(&p.package))
    else {
        return Ok(None);
    };
    let layers = vec![base_layer(arch)?, scripts_layer()?];
    let diff_ids: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
    let (label_key, label) = if p.package == STAND_IN {
        (
            "nodeforge.stand-in",
            format!("nodeforge stand-in for {name} (a script on Debian trixie)"),
        )
    } else {
        (
            "nodeforge.test-image",
            format!(
                "test image: Debian trixie's {} package ({arch}) under the name {name}",
                p.package
            ),
        )
    };
    // The official postgres images put the server's tools on PATH
    // (ENV PATH $PATH:/usr/lib/postgresql/$PG_MAJOR/bin), which a stack's
    // `docker exec … pg_dumpall` relies on; trixie's major is 17.
    // edoburu/pgbouncer has psql on its PATH too (Alpine's
    // postgresql-client).
    let path = if p.package.starts_with("postgresql") || p.package == "pgbouncer" {
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/postgresql/17/bin"
    } else {
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    };
    let env: Vec<&str> = [path, "LANG=C.UTF-8"]
        .into_iter()
        .chain(p.env.iter().copied())
        .collect();
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "Entrypoint": if p.entrypoint.is_empty() { serde_json::Value::Null } else { p.entrypoint.into() },
            "Cmd": p.cmd,
            "Env": env,
            "WorkingDir": "/",
            "Labels": {label_key: label},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "mmdebstrap"}, {"created_by": "nodeforge qemu-tests"}],
    });
    Ok(Some(TestImage {
        config: serde_json::to_vec(&config)?,
        layers,
    }))
}

/// The shared layer of `arch`: built once (per package list and hooks)
/// into target/qemu-tests/debian-images/, then read from there.
fn base_layer(arch: &str) -> Result<Vec<u8>> {
    static LAYERS: Mutex<Vec<(String, Vec<u8>)>> = Mutex::new(Vec::new());
    let mut cached = LAYERS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, l)) = cached.iter().find(|(a, _)| a == arch) {
        return Ok(l.clone());
    }
    let tar = layer_file(arch)?;
    let data = std::fs::read(&tar).with_context(|| format!("reading {}", tar.display()))?;
    cached.push((arch.to_owned(), data.clone()));
    Ok(data)
}

/// The layer tar of `arch`, built first if missing.
fn layer_file(arch: &str) -> Result<PathBuf> {
    let key = sha256_bytes(format!("{arch} {:?} {CUSTOMIZE}", packages(arch)).as_bytes());
    let dir = workspace_root().join("target/qemu-tests/debian-images");
    let tar = dir.join(format!("{}.tar", &key[..16]));
    if !tar.is_file() {
        build(arch, &dir, &tar)?;
    }
    Ok(tar)
}

/// Debian's static busybox of `arch`, from that architecture's layer
/// (the stand-ins of an arm64 node must run arm64 code).
pub fn busybox(arch: &str) -> Result<PathBuf> {
    let tar = layer_file(arch)?;
    let out = tar.with_extension("busybox");
    if !out.is_file() {
        let mut archive = tar::Archive::new(
            std::fs::File::open(&tar).with_context(|| format!("opening {}", tar.display()))?,
        );
        let mut found = false;
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.into_owned();
            let p = path.to_string_lossy();
            if matches!(
                p.trim_start_matches("./"),
                "usr/bin/busybox" | "bin/busybox"
            ) && entry.header().entry_type().is_file()
            {
                let partial = out.with_extension("partial");
                entry.unpack(&partial)?;
                std::fs::rename(&partial, &out)?;
                found = true;
                break;
            }
        }
        anyhow::ensure!(found, "{} holds no busybox", tar.display());
    }
    Ok(out)
}

fn build(arch: &str, dir: &std::path::Path, tar: &PathBuf) -> Result<()> {
    nodeforge::fsutil::create_dir_all(dir)?;
    let partial = tar.with_extension("partial");
    let started = std::time::Instant::now();
    Cmd::new("mmdebstrap")
        .args([
            "--variant=minbase",
            "--mode=root",
            "--format=tar",
            "--skip=output/dev",
            "--skip=output/mknod",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
        ])
        .arg(format!("--architectures={arch}"))
        .arg(format!("--include={}", packages(arch).join(",")))
        .arg(format!("--customize-hook={CUSTOMIZE}"))
        .args(["trixie"])
        .arg(&partial)
        .env("LC_ALL", "C.UTF-8")
        .run()
        .with_context(|| {
            format!("building the Debian services' {arch} test layer with mmdebstrap")
        })?;
    std::fs::rename(&partial, tar).with_context(|| format!("renaming to {}", tar.display()))?;
    eprintln!(
        "debian_images: built {} ({} MB) in {:.0}s",
        tar.display(),
        std::fs::metadata(tar).map(|m| m.len() >> 20).unwrap_or(0),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

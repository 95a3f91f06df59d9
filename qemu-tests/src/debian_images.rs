//! Test images of the services Debian packages, served under the public
//! names the stacks use, so a boot test runs the role's configuration of
//! them for real: PostgreSQL, Redis, Prometheus and postgres_exporter.
//! On the same layer, two STAND-INS for what Debian lacks but a fleet test
//! must see work end to end, logs: Grafana Alloy (a script that follows
//! the host's journal and pushes it where the stack's Alloy config says)
//! and Grafana Loki (a script that records pushes and answers queries),
//! qemu-tests/standins/debian-images/.
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

/// The packages of the shared layer.
const PACKAGES: &[&str] = &[
    "postgresql",
    "redis-server",
    "prometheus",
    "prometheus-postgres-exporter",
    // The log stand-ins: Python, and its journal reader.
    "python3",
    "python3-systemd",
];

/// mmdebstrap's hook: no cluster of Debian's own (the entrypoint makes
/// the container's), the official images' data directories, and out what
/// no test runs, to keep the layer small (628 MB to 338 MB): promtool,
/// PostgreSQL's JIT (LLVM, its bitcode; the entrypoint turns `jit` off),
/// the console libraries.
const CUSTOMIZE: &str = "rm -rf \"$1\"/var/lib/postgresql/* \"$1\"/etc/postgresql/* \
     \"$1\"/usr/bin/promtool \"$1\"/usr/lib/x86_64-linux-gnu/libLLVM* \
     \"$1\"/usr/lib/x86_64-linux-gnu/libz3* \"$1\"/usr/lib/postgresql/*/lib/bitcode \
     \"$1\"/usr/share/javascript; \
     mkdir -p \"$1\"/prometheus \"$1\"/var/lib/postgresql/data \"$1\"/data \"$1\"/loki";

/// A public image name and how its container starts.
struct Provided {
    name: &'static str,
    /// The Debian package it runs, or the stand-in script's name.
    package: &'static str,
    entrypoint: &'static [&'static str],
    cmd: &'static [&'static str],
}

const PROVIDED: &[Provided] = &[
    Provided {
        name: "postgres:16.4",
        package: "postgresql",
        entrypoint: &["/usr/local/bin/docker-entrypoint.sh"],
        cmd: &["postgres"],
    },
    Provided {
        name: "redis:7.4.1",
        package: "redis-server",
        entrypoint: &[],
        cmd: &["redis-server"],
    },
    Provided {
        name: "prom/prometheus:v2.54.1",
        package: "prometheus",
        entrypoint: &["/usr/bin/prometheus"],
        cmd: &[
            "--config.file=/etc/prometheus/prometheus.yml",
            "--storage.tsdb.path=/prometheus",
        ],
    },
    Provided {
        name: "quay.io/prometheuscommunity/postgres-exporter:v0.15.0",
        package: "prometheus-postgres-exporter",
        entrypoint: &["/usr/bin/prometheus-postgres-exporter"],
        cmd: &[],
    },
    Provided {
        name: "grafana/alloy:v1.4.3",
        package: STAND_IN,
        entrypoint: &["/usr/local/bin/alloy-standin"],
        cmd: &["run", "/etc/alloy/config.alloy"],
    },
    Provided {
        name: "grafana/loki:3.2.1",
        package: STAND_IN,
        entrypoint: &["/usr/local/bin/loki-standin"],
        cmd: &[],
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
    layer_tar(&[
        (
            "usr/local/bin/docker-entrypoint.sh",
            0o755,
            POSTGRES_ENTRYPOINT.as_bytes(),
        ),
        ("usr/local/bin/alloy-standin", 0o755, &alloy),
        ("usr/local/bin/loki-standin", 0o755, &loki),
    ])
}

/// What the official postgres image's entrypoint does that the data stack
/// relies on: a new data directory gets a cluster owned by `postgres`,
/// the superuser $POSTGRES_USER with $POSTGRES_PASSWORD (SCRAM for TCP
/// clients), the database $POSTGRES_DB and the scripts of
/// /docker-entrypoint-initdb.d; then the server runs as `postgres`,
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
    if [ "$db" != postgres ]; then
        echo "CREATE DATABASE \"$db\";" | as_postgres postgres --single -D "$PGDATA" postgres >/dev/null
    fi
    for f in /docker-entrypoint-initdb.d/*.sql; do
        [ -e "$f" ] || continue
        echo "running $f"
        as_postgres postgres --single -j -D "$PGDATA" "$db" <"$f" >/dev/null
    done
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
    let Some(p) = PROVIDED.iter().find(|p| p.name == name) else {
        return Ok(None);
    };
    let layers = vec![base_layer()?, scripts_layer()?];
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
                "test image: Debian trixie's {} package under the name {name}",
                p.package
            ),
        )
    };
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "Entrypoint": if p.entrypoint.is_empty() { serde_json::Value::Null } else { p.entrypoint.into() },
            "Cmd": p.cmd,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
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

/// The shared layer: built once (per package list and hooks) into
/// target/qemu-tests/debian-images/, then read from there.
fn base_layer() -> Result<Vec<u8>> {
    static LAYER: Mutex<Option<Vec<u8>>> = Mutex::new(None);
    let mut cached = LAYER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = cached.as_ref() {
        return Ok(l.clone());
    }
    let key = sha256_bytes(format!("{PACKAGES:?} {CUSTOMIZE}").as_bytes());
    let dir = workspace_root().join("target/qemu-tests/debian-images");
    let tar = dir.join(format!("{}.tar", &key[..16]));
    if !tar.is_file() {
        build(&dir, &tar)?;
    }
    let data = std::fs::read(&tar).with_context(|| format!("reading {}", tar.display()))?;
    *cached = Some(data.clone());
    Ok(data)
}

fn build(dir: &std::path::Path, tar: &PathBuf) -> Result<()> {
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
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(format!("--customize-hook={CUSTOMIZE}"))
        .args(["trixie"])
        .arg(&partial)
        .env("LC_ALL", "C.UTF-8")
        .run()
        .context("building the Debian services' test layer with mmdebstrap")?;
    std::fs::rename(&partial, tar).with_context(|| format!("renaming to {}", tar.display()))?;
    eprintln!(
        "debian_images: built {} ({} MB) in {:.0}s",
        tar.display(),
        std::fs::metadata(tar).map(|m| m.len() >> 20).unwrap_or(0),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

//! The single-host roles booted with their whole stacks, side by side:
//! controlplane (Zentoria), cloud (AINI), observability, workspace and
//! ai (AINode, on its nvidia-gpu hardware, in a guest without a GPU),
//! each built from its role profile as a user builds it, stamped with its
//! seed and booted in QEMU (TCG) at the same time, one vCPU each. None
//! needs another to come up, so no LAN joins them; each checks its own
//! wiring.
//!
//! Real (Debian's packages under the public names, see
//! qemu_tests::debian_images): PostgreSQL with pgvector, Redis,
//! Prometheus, nginx, MariaDB; and the image's own Docker, compose, journal, agent.
//! Real on the ai node: Debian's NVIDIA driver, its module built by DKMS
//! in the image. Stand-ins: NVIDIA's container toolkit (packages of the
//! real names from a local signed repository, qemu_tests::test_apt),
//! Loki, Alloy and Vault's init/unseal/health API (scripts on
//! the Debian layer, so the first-boot unseal runs end to end); busybox
//! httpd on the service's port, answering the role's health paths, for
//! everything else (n8n, MinIO, Ollama, Whisper, Qdrant, Grafana, Traefik,
//! Consul, LibreChat, MongoDB, Nextcloud, OnlyOffice, Netdata,
//! Watchtower, Tempo, code-server, JupyterHub, draw.io, Excalidraw, Open
//! WebUI) and
//! Tailscale's client and control server.

use std::time::Instant;

use qemu_tests::backup::{backup_and_restore, RESTORE_DIR};
use qemu_tests::stacks::{
    assert_all_healthy, check_as_ready, prepare_on_two_lanes, print_secret, step, Guest, Machine,
    Node, Running, AI, CLOUD, CONTROLPLANE, LOGS, OBSERVABILITY, WORKSPACE,
};

/// A node of this test: one SMBIOS UUID and MAC each.
fn machine(i: usize) -> Machine {
    const UUIDS: [&str; 5] = [
        "8d0c7a51-3b3e-4c61-9f0e-5a1d2c3b4e21",
        "8d0c7a51-3b3e-4c61-9f0e-5a1d2c3b4e22",
        "8d0c7a51-3b3e-4c61-9f0e-5a1d2c3b4e23",
        "8d0c7a51-3b3e-4c61-9f0e-5a1d2c3b4e24",
        "8d0c7a51-3b3e-4c61-9f0e-5a1d2c3b4e25",
    ];
    const MACS: [&str; 5] = [
        "52:54:00:6e:66:21",
        "52:54:00:6e:66:22",
        "52:54:00:6e:66:23",
        "52:54:00:6e:66:24",
        "52:54:00:6e:66:25",
    ];
    Machine {
        uuid: UUIDS[i],
        mac: MACS[i],
    }
}

#[test]
fn the_single_host_roles_boot_with_working_stacks() {
    // The ai image (its rootfs builds the NVIDIA module with DKMS) on one
    // lane, the four others on the other.
    let mut nodes: [Node; 5] = prepare_on_two_lanes([
        &[
            ("qemu-tests/profiles/role-controlplane.toml", None),
            ("qemu-tests/profiles/role-cloud.toml", None),
            ("qemu-tests/profiles/role-observability.toml", None),
            ("qemu-tests/profiles/role-workspace.toml", None),
        ],
        &[("qemu-tests/profiles/role-ai.toml", None)],
    ])
    .try_into()
    .unwrap_or_else(|_| unreachable!("five profiles, five nodes"));
    for n in &nodes {
        let mut seed = n.seed(qemu_tests::stacks::GOOD_KEY, &[]);
        // workspace's backups go where its fleet file would send them.
        if n.name.ends_with("workspace") {
            seed.backup_repository = Some(SEED_REPOSITORY.into());
        }
        n.stamp_seed(&seed);
    }

    let slot = qemu_tests::vm_slot();
    let started = Instant::now();
    let booting: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let guest = Guest {
                // Five guests share two cores.
                cpus: Some(1),
                ..Guest::default()
            };
            n.launch(&format!("single-{}", n.name), &machine(i), &guest)
        })
        .collect();
    // Each node is checked as soon as it is ready and then stopped, so the
    // ones still booting get its CPU.
    let times = check_as_ready(nodes.iter_mut(), booting, "single", |n, vm| {
        vm.assert_complete(n);
        let secrets = step(&n.status, "stack-secrets");
        assert_eq!(secrets["state"], "done", "{}: {secrets:#}", n.name);
        match n.name.trim_start_matches("role-") {
            "controlplane" => {
                assert_all_healthy(&n.status, &[LOGS, CONTROLPLANE]);
                check_vault_unsealed(n, vm);
                check_pgvector(vm);
                check_controlplane_pgbouncer(vm);
                check_controlplane_backup(vm);
            }
            "cloud" => {
                assert_all_healthy(&n.status, &[LOGS, CLOUD]);
                check_vault_unsealed(n, vm);
                check_cloud_mariadb_dump(vm);
            }
            "observability" => {
                assert_all_healthy(&n.status, &[LOGS, OBSERVABILITY]);
                check_prometheus_config(vm);
            }
            "workspace" => {
                assert_all_healthy(&n.status, &[LOGS, WORKSPACE]);
                let repo = step(&n.status, "backup-repository");
                assert_eq!(repo["state"], "done", "workspace: {repo:#}");
                check_workspace_backup(vm);
                check_code_server_volumes(vm);
            }
            "ai" => {
                assert_all_healthy(&n.status, &[LOGS, AI]);
                check_nvidia_driver(vm);
                check_ollama_without_gpu(vm);
                check_baked_models(vm);
            }
            other => panic!("no checks for node {other}"),
        }
    });
    let times: Vec<String> = nodes
        .iter()
        .zip(&times)
        .map(|(n, t)| {
            format!(
                "{} ready {:.1}s, checked {:.1}s",
                n.hostname,
                t.ready.as_secs_f64(),
                t.checked.as_secs_f64()
            )
        })
        .collect();
    eprintln!(
        "single hosts (from QEMU start): {}; all {:.1}s",
        times.join("; "),
        started.elapsed().as_secs_f64()
    );
    drop(slot);
}

/// Vault was initialised once at first boot, its unseal key and root
/// token kept as 0600 root files beside the stack's secrets, and it is
/// unsealed (its health endpoint answers 200 only then).
fn check_vault_unsealed(node: &Node, vm: &Running) {
    let out = vm.ssh.run(
        "sudo sh -c 'stat -c \"%a %U %n\" /var/lib/nodeforge/secrets/vault/*'; \
         systemctl is-active nodeforge-vault-unseal.service; \
         python3 -c 'import urllib.request as u; print(u.urlopen(\"http://127.0.0.1:8200/v1/sys/health\").status)'",
    );
    eprintln!("{}: vault: {}", node.name, out.trim());
    assert!(out.contains("600 root "), "{}: {out}", node.name);
    assert!(out.trim_end().ends_with("200"), "{}: {out}", node.name);
}

/// controlplane's init SQL made the vector extension in its database.
fn check_pgvector(vm: &Running) {
    let out = vm.ssh.run(
        "sudo docker exec $(sudo docker ps -qf label=com.docker.compose.service=postgres) \
         sh -c '$(ls -d /usr/lib/postgresql/*/bin)/psql -U \"$POSTGRES_USER\" -d \"${POSTGRES_DB:-$POSTGRES_USER}\" -h /run/postgresql -tAc \"select extname from pg_extension order by 1\"'",
    );
    assert!(out.lines().any(|l| l == "vector"), "extensions: {out}");
}

/// controlplane's PgBouncer pools seed 002's databases: zentoria_vectors
/// (transaction pool) has its vector extension, relayed to the server on
/// 5432; n8n's login (its password from the stack's secrets file, over
/// stdin) may create tables in its database through the session pool.
fn check_controlplane_pgbouncer(vm: &Running) {
    let psql = "psql -h 127.0.0.1 -p 6432 -v ON_ERROR_STOP=1 -qtA";
    let out = vm.ssh.run(&format!(
        "sudo docker exec $(sudo docker ps -qf label=com.docker.compose.service=pgbouncer) \
         {psql} -U zentoria -d zentoria_vectors \
         -c \"select inet_server_port() || chr(32) || extname from pg_extension where extname = 'vector'\""
    ));
    assert_eq!(
        out.trim(),
        "5432 vector",
        "zentoria_vectors through PgBouncer"
    );
    let out = vm.ssh.run(&format!(
        "{} | sudo docker exec -i $(sudo docker ps -qf label=com.docker.compose.service=pgbouncer) \
         sh -c 'read -r PGPASSWORD; export PGPASSWORD; {psql} -U n8n -d n8n \
         -c \"create table pool_check(x int); drop table pool_check; select current_user\"'",
        print_secret("controlplane", "N8N_DB_PASSWORD")
    ));
    assert_eq!(out.trim(), "n8n", "n8n's login through PgBouncer");
    eprintln!("controlplane: PgBouncer pools zentoria_vectors and n8n");
}

/// controlplane's restic backup holds a pg_dumpall of its PostgreSQL and
/// its volumes, less PostgreSQL's live files and the re-made stores.
fn check_controlplane_backup(vm: &Running) {
    let restored = backup_and_restore(vm, "controlplane", "controlplane");
    assert_eq!(restored.dumps, ["postgres.sql"], "{restored:?}");
    let roles = vm.ssh.run(&format!(
        "sudo grep -c '^CREATE ROLE zentoria;' {RESTORE_DIR}/var/lib/nodeforge/backup/dumps/postgres.sql"
    ));
    assert_eq!(roles.trim(), "1", "the dump lacks the stack's role");
    let volumes = &restored.volumes;
    for v in [
        "controlplane_n8n",
        "controlplane_vault",
        "controlplane_grafana",
    ] {
        assert!(
            volumes.iter().any(|x| x == v),
            "{v} not restored: {volumes:?}"
        );
    }
    for v in [
        "controlplane_postgres",
        "controlplane_prometheus",
        "controlplane_loki",
    ] {
        assert!(
            !volumes.iter().any(|x| x == v),
            "{v} was backed up: {volumes:?}"
        );
    }
}

/// cloud's MariaDB dump (its line of /etc/nodeforge/backup-dumps, run as
/// the backup runs it) works against the real MariaDB: the root password
/// reaches mariadb-dump in a temporary file, and the dump holds Nextcloud's
/// database. (cloud's whole backup is not run: MongoDB's test image is a
/// stand-in without mongodump.)
fn check_cloud_mariadb_dump(vm: &Running) {
    let out = vm.ssh.run(
        "sudo sh -c 'cmd=$(sed -n \"s/^mariadb|mariadb.sql|//p\" /etc/nodeforge/backup-dumps); \
         docker exec $(docker ps -qf label=com.docker.compose.service=mariadb) sh -c \"$cmd\"' \
         | grep -c '^CREATE DATABASE .*`nextcloud`'",
    );
    assert_eq!(
        out.trim(),
        "1",
        "cloud's MariaDB dump lacks nextcloud: {out}"
    );
}

/// The restic repository workspace's seed names (as a fleet file's
/// `backup_repository` would), over the image's /srv/backups/restic.
const SEED_REPOSITORY: &str = "/srv/backups/fleet-restic";

/// workspace's backup keeps code-server's bind-mounted data
/// (vars.backup_paths) beside its volumes: a file written into
/// /srv/workspace/projects comes back with its content. It went to the
/// repository its seed names, not the image's.
fn check_workspace_backup(vm: &Running) {
    let marker = "/srv/workspace/projects/nodeforge-backup-marker";
    let written = vm.ssh.run(&format!(
        "date +%s%N | sudo tee {marker} && sudo chown 1000:1000 {marker}"
    ));
    let restored = backup_and_restore(vm, "workspace", "workspace");
    assert!(
        restored
            .volumes
            .iter()
            .any(|x| x == "workspace_jupyterhub-home"),
        "{restored:?}"
    );
    let back = vm.ssh.run(&format!("sudo cat {RESTORE_DIR}{marker}"));
    assert_eq!(back, written, "/srv/workspace not restored as it was");
    assert!(
        restored
            .status_line
            .contains(&format!(" in {SEED_REPOSITORY} of ")),
        "{restored:?}"
    );
    let repos = vm.ssh.run(&format!(
        "sudo sh -c 'ls -d {SEED_REPOSITORY}/config /srv/backups/restic 2>&1; true'"
    ));
    assert!(
        repos.contains(&format!("{SEED_REPOSITORY}/config\n"))
            && repos.contains("/srv/backups/restic': No such file"),
        "the backup did not go to the seed's repository alone: {repos}"
    );
}

/// observability's real Prometheus loaded the role's configuration.
fn check_prometheus_config(vm: &Running) {
    // Python from the test image's Debian layer: the node has none.
    let out = vm.ssh.run(
        "sudo docker exec $(sudo docker ps -qf label=com.docker.compose.service=prometheus) \
         python3 -c 'import urllib.request as u; print(u.urlopen(\"http://127.0.0.1:9090/api/v1/status/config\").read().decode())'",
    );
    assert!(out.contains("\"status\":\"success\""), "{out}");
}

/// code-server runs as uid 1000: the host directories it mounts are that
/// user's.
fn check_code_server_volumes(vm: &Running) {
    let out = vm.ssh.run(
        "sudo docker inspect $(sudo docker ps -qf label=com.docker.compose.service=code-server) \
         --format '{{range .Mounts}}{{if eq .Type \"bind\"}}{{.Source}} {{end}}{{end}}' \
         | xargs -rn1 sudo stat -c '%u %n'",
    );
    let mounts: Vec<&str> = out.lines().collect();
    assert!(
        mounts.iter().any(|l| l.contains("/srv/workspace/")),
        "code-server mounts nothing of /srv/workspace: {out}"
    );
    for l in mounts.iter().filter(|l| l.contains("/srv/workspace/")) {
        assert!(l.starts_with("1000 "), "not uid 1000's: {l}\n{out}");
    }
}

/// The ai node's NVIDIA driver: DKMS built Debian's module for the
/// image's own kernel (its vermagic starts with the running kernel's
/// release), the libraries the container toolkit hands to GPU containers
/// (CUDA's libcuda.so.1, NVML's libnvidia-ml.so.1) are in the linker's
/// cache, the toolkit's programs answer, and dockerd has the nvidia
/// runtime and the hook it registers its "nvidia" device driver with.
fn check_nvidia_driver(vm: &Running) {
    let out = vm.ssh.run(
        "uname -r; /usr/sbin/modinfo -F vermagic nvidia-current; \
         /usr/sbin/ldconfig -p | grep -oE 'lib(cuda|nvidia-ml)\\.so\\.1 ' | sort -u; \
         nvidia-container-cli --version; nvidia-ctk --version; \
         sudo docker info --format '{{range $name, $_ := .Runtimes}}runtime {{$name}} {{end}}'",
    );
    eprintln!("ai: driver and toolkit:\n{}", out.trim());
    let mut lines = out.lines();
    let release = lines.next().unwrap_or_default().trim();
    let vermagic = lines.next().unwrap_or_default();
    assert!(!release.is_empty(), "uname -r printed nothing:\n{out}");
    assert_eq!(
        vermagic.split_whitespace().next(),
        Some(release),
        "the DKMS module's vermagic is the image kernel's release:\n{out}"
    );
    for want in [
        "libcuda.so.1",
        "libnvidia-ml.so.1",
        "cli-version: 1.17.3",
        "NVIDIA Container Toolkit CLI version",
        "runtime nvidia",
    ] {
        assert!(out.contains(want), "{want} missing:\n{out}");
    }
}

/// The ai profile's models (llama3.2 and nomic-embed-text, stand-ins in
/// Ollama's format served under those names) are in Ollama's store as the
/// Ollama container sees it, each manifest with the digest the lock file
/// gives (the ID `ollama list` shows) and every blob it names present and
/// whole, with nothing fetched at first boot (the node has no registry).
fn check_baked_models(vm: &Running) {
    let lock_path = qemu_tests::workspace_root().join("qemu-tests/profiles/role-ai.lock.toml");
    let lock = nodeforge::oci::lock::LockFile::read(&lock_path)
        .unwrap()
        .expect("the test locked role-ai");
    let names: Vec<&str> = lock.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["llama3.2", "nomic-embed-text"], "{lock_path:?}");
    let out = vm.ssh.run(
        "sudo docker exec $(sudo docker ps -qf label=com.docker.compose.service=ollama) \
         /bin/sh -c 'cd /root/.ollama/models && for f in manifests/*/*/*/* blobs/*; do \
         echo \"$f $(/bin/busybox sha256sum < $f | /bin/busybox cut -d\" \" -f1)\"; done'",
    );
    eprintln!("ai: Ollama's store:\n{}", out.trim());
    let files: Vec<(&str, &str)> = out.lines().filter_map(|l| l.split_once(' ')).collect();
    for m in &lock.models {
        let name = nodeforge::oci::ollama::ModelName::parse(&m.name).unwrap();
        let path = name.manifest_path();
        let path = path.to_str().unwrap();
        assert!(
            files.contains(&(path, m.digest.hex())),
            "{}: no manifest {path} with the locked digest {}: {out}",
            m.name,
            m.digest
        );
    }
    let blobs: Vec<_> = files
        .iter()
        .filter(|(f, _)| f.starts_with("blobs/"))
        .collect();
    // Per model: its config and four layers (weights, template,
    // parameters, licence); the two stand-ins share the last three.
    assert_eq!(blobs.len(), 2 * 2 + 3, "{out}");
    for (file, sha) in blobs {
        assert_eq!(*file, format!("blobs/sha256-{sha}"), "a torn blob: {out}");
    }
}

/// No GPU in the guest: the hardware's overlay told the agent so, compose
/// still asked dockerd for NVIDIA devices (0 of them), dockerd ran the
/// toolkit's hook, which found NVIDIA_VISIBLE_DEVICES=void (the stack's,
/// over the stand-in's image ENV of "all", as Ollama's image has it), and
/// Ollama runs on the CPU (its health is asserted with the stack's).
fn check_ollama_without_gpu(vm: &Running) {
    let out = vm.ssh.run(
        "cat /run/nodeforge/nvidia-gpus.env; \
         sudo docker inspect $(sudo docker ps -qf label=com.docker.compose.service=ollama) \
         --format 'requests {{json .HostConfig.DeviceRequests}}'; \
         sudo cat /var/log/nvidia-container-toolkit.log",
    );
    eprintln!("ai: GPU-less start:\n{}", out.trim());
    assert!(out.lines().any(|l| l == "NVIDIA_GPUS=0"), "{out}");
    assert!(
        out.lines().any(|l| l == "NVIDIA_VISIBLE_DEVICES=void"),
        "{out}"
    );
    assert!(
        out.contains("\"Driver\":\"nvidia\"") && out.contains("\"Count\":0"),
        "Ollama's GPU reservation: {out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("prestart ") && l.ends_with(": NVIDIA_VISIBLE_DEVICES=void")),
        "the toolkit's hook was not run with void for a 0-device request: {out}"
    );
}

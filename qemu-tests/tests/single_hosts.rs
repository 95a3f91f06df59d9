//! The single-host roles booted with their whole stacks, side by side:
//! controlplane (Zentoria), cloud (AINI), observability and workspace,
//! each built from its role profile as a user builds it, stamped with its
//! seed and booted in QEMU (TCG) at the same time, one vCPU each. Each is
//! a fleet of its own, so no LAN joins them; each checks its own wiring.
//!
//! Real (Debian's packages under the public names, see
//! qemu_tests::debian_images): PostgreSQL with pgvector, Redis,
//! Prometheus, nginx; and the image's own Docker, compose, journal, agent.
//! Stand-ins: Loki, Alloy and Vault's init/unseal/health API (scripts on
//! the Debian layer, so the first-boot unseal runs end to end); busybox
//! httpd on the service's port, answering the role's health paths, for
//! everything else (n8n, MinIO, Ollama, Whisper, Qdrant, Grafana, Traefik,
//! Consul, LibreChat, MongoDB, Nextcloud, MariaDB, OnlyOffice, Netdata,
//! Watchtower, Tempo, code-server, JupyterHub, draw.io, Excalidraw) and
//! Tailscale's client and control server.

use std::time::Instant;

use qemu_tests::stacks::{
    assert_all_healthy, prepare, step, wait_all, Guest, Machine, Node, Running, CLOUD,
    CONTROLPLANE, LOGS, OBSERVABILITY, WORKSPACE,
};

/// A node of this test: one SMBIOS UUID and MAC each.
fn machine(i: usize) -> Machine {
    const UUIDS: [&str; 4] = [
        "8d0c7a51-3b3e-4c61-9f0e-5a1d2c3b4e21",
        "8d0c7a51-3b3e-4c61-9f0e-5a1d2c3b4e22",
        "8d0c7a51-3b3e-4c61-9f0e-5a1d2c3b4e23",
        "8d0c7a51-3b3e-4c61-9f0e-5a1d2c3b4e24",
    ];
    const MACS: [&str; 4] = [
        "52:54:00:6e:66:21",
        "52:54:00:6e:66:22",
        "52:54:00:6e:66:23",
        "52:54:00:6e:66:24",
    ];
    Machine {
        uuid: UUIDS[i],
        mac: MACS[i],
    }
}

#[test]
fn the_single_host_roles_boot_with_working_stacks() {
    let mut nodes = [
        prepare("qemu-tests/profiles/role-controlplane.toml", None),
        prepare("qemu-tests/profiles/role-cloud.toml", None),
        prepare("qemu-tests/profiles/role-observability.toml", None),
        prepare("qemu-tests/profiles/role-workspace.toml", None),
    ];
    for n in &nodes {
        n.stamp(qemu_tests::stacks::GOOD_KEY, &[]);
    }

    let slot = qemu_tests::vm_slot();
    let started = Instant::now();
    let booting: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let guest = Guest {
                // Four guests share two cores.
                cpus: Some(1),
                ..Guest::default()
            };
            n.launch(&format!("single-{}", n.name), &machine(i), &guest)
        })
        .collect();
    let running = wait_all(nodes.iter_mut(), booting, "single");
    let times: Vec<String> = nodes
        .iter()
        .zip(&running)
        .map(|(n, r)| format!("{} {:.1}s", n.hostname, r.took.as_secs_f64()))
        .collect();
    eprintln!(
        "single hosts: time to ready (status line, from QEMU start): {}; all {:.1}s",
        times.join(", "),
        started.elapsed().as_secs_f64()
    );
    let [controlplane, cloud, observability, workspace] = &nodes;
    let [cp_vm, cloud_vm, obs_vm, ws_vm]: &[Running; 4] = running
        .as_slice()
        .try_into()
        .unwrap_or_else(|_| unreachable!("four nodes, four guests"));

    assert_all_healthy(&controlplane.status, &[LOGS, CONTROLPLANE]);
    assert_all_healthy(&cloud.status, &[LOGS, CLOUD]);
    assert_all_healthy(&observability.status, &[LOGS, OBSERVABILITY]);
    assert_all_healthy(&workspace.status, &[LOGS, WORKSPACE]);
    for n in &nodes {
        let secrets = step(&n.status, "stack-secrets");
        assert_eq!(secrets["state"], "done", "{}: {secrets:#}", n.name);
    }
    check_vault_unsealed(controlplane, cp_vm);
    check_vault_unsealed(cloud, cloud_vm);
    check_pgvector(cp_vm);
    check_prometheus_config(obs_vm);
    check_code_server_volumes(ws_vm);
    drop(running);
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

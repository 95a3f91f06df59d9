//! The fleet booted together: core, data and media, each built from its
//! role profile as a user builds it, stamped with its seed and booted at
//! the same time on one virtual LAN (nodeforge::boot::Lan) beside its own
//! user networking. The stand-in tailscaled of the real package name runs
//! each node's tunnel over that LAN and enforces the node's packet filter,
//! compiled from the policy `nodeforge tailnet policy` generates
//! (qemu_tests::control), so the flows below pass or are dropped as the
//! generated policy says.
//!
//! Real: PostgreSQL, Redis, Prometheus, Alertmanager, postgres_exporter
//! and the landing page's nginx (Debian's packages, qemu_tests::debian_images),
//! node_exporter (the image's own
//! package), the journal, Docker, compose, systemd-resolved, the agent.
//! Stand-ins: Alloy and Loki (scripts that push the journal where the
//! stack's Alloy config says and record what arrives); busybox httpd on
//! the service's port for Traefik, Authelia, n8n, Uptime Kuma, Portainer,
//! Grafana, cAdvisor, MinIO, Meilisearch,
//! PostgREST, the backup job, Jellyfin, Navidrome, CopyParty, Snapcast;
//! Tailscale's client and control server; and the webhook Alertmanager
//! notifies (qemu_tests::webhook, on this machine).
//!
//! What core, data and media each checked alone before (every service
//! healthy, secrets made on the node, the fleet in prometheus.yml, the
//! media disk) is checked here too.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use nodeforge::boot::Lan;
use qemu_tests::control;
use qemu_tests::webhook::WebhookSink;

#[path = "fleet/alerts.rs"]
mod alerts;
#[path = "fleet/backup.rs"]
mod backup;
#[path = "fleet/databases.rs"]
mod databases;
#[path = "fleet/logins.rs"]
mod logins;
#[path = "fleet/network.rs"]
mod network;
use alerts::{check_alert_rules, check_container_health, check_node_down_alert};
use backup::{check_backup_and_restore, check_core_backup};
use databases::{check_api_role, check_postgres_from_core};
use logins::{check_portainer_admin_file, check_syncthing_login};
use network::{check_firewall, check_flows};
use qemu_tests::stacks::{
    assert_all_healthy, free_port, image_file, prepare_on_two_lanes, step, wait_all, Guest,
    Machine, Node, Running, CORE, DATA, GOOD_KEY, LOGS, MEDIA,
};

/// The data node's PostgreSQL password, given in its seed so the test can
/// query with it (never on a command line: it goes over stdin).
const POSTGRES_PASSWORD: &str = "fleet-test-pg-3f9a1c";

/// n8n's login on data's PostgreSQL: one value in both nodes' seeds
/// (`nodeforge customize --stack-secret N8N_DB_PASSWORD=FILE`), as a
/// fleet shares a secret between two nodes.
const N8N_DB_PASSWORD: &str = "fleet-test-n8n-7c1e0b";

/// A node of the fleet: one SMBIOS UUID and MAC each.
fn machine(i: usize) -> Machine {
    const UUIDS: [&str; 3] = [
        "8d0c7a51-3b3e-4c61-9f0e-5a1d2c3b4e11",
        "8d0c7a51-3b3e-4c61-9f0e-5a1d2c3b4e12",
        "8d0c7a51-3b3e-4c61-9f0e-5a1d2c3b4e13",
    ];
    const MACS: [&str; 3] = [
        "52:54:00:6e:66:11",
        "52:54:00:6e:66:12",
        "52:54:00:6e:66:13",
    ];
    Machine {
        uuid: UUIDS[i],
        mac: MACS[i],
    }
}

#[test]
fn the_fleet_boots_together_and_talks_as_the_policy_says() {
    // core's rootfs on one lane; data's, which media shares, on the other.
    let [mut core, mut data, mut media]: [Node; 3] = prepare_on_two_lanes([
        &[("qemu-tests/profiles/role-core.toml", None)],
        &[
            ("qemu-tests/profiles/role-data.toml", None),
            ("qemu-tests/profiles/role-media.toml", Some(64)),
        ],
    ])
    .try_into()
    .unwrap_or_else(|_| unreachable!("three profiles, three nodes"));
    // Where core's Alertmanager notifies: a receiver on this machine, its
    // URL a stack secret in the seed as a user gives theirs.
    let webhook = WebhookSink::start();
    let notify_url = webhook.guest_url("/alerts");
    core.stamp(
        GOOD_KEY,
        &[
            ("N8N_DB_PASSWORD", N8N_DB_PASSWORD),
            ("ALERT_NOTIFY_URL", &notify_url),
        ],
    );
    data.stamp(
        GOOD_KEY,
        &[
            ("POSTGRES_PASSWORD", POSTGRES_PASSWORD),
            ("N8N_DB_PASSWORD", N8N_DB_PASSWORD),
        ],
    );
    media.stamp(GOOD_KEY, &[]);

    // All three at once: the VM slot is held for the fleet.
    let slot = qemu_tests::vm_slot();
    let lan = Lan::start().expect("starting the virtual LAN");
    // Forwards from this machine into each node's LAN interface (QEMU's
    // user network) for the ports the firewall must keep off the LAN.
    let mut taken = Vec::new();
    let mut lan_forwards = |guest_ports: &[u16]| -> Vec<(u16, u16)> {
        guest_ports
            .iter()
            .map(|g| {
                let p = std::iter::repeat_with(free_port)
                    .find(|p| !taken.contains(p))
                    .expect("a free port");
                taken.push(p);
                (p, *g)
            })
            .collect()
    };
    let core_lan = lan_forwards(&[9090, 3100]);
    let data_lan = lan_forwards(&[5432, 6432, 6379, 9000]);
    let started = Instant::now();
    let mut booting = Vec::new();
    for (i, node) in [&core, &data, &media].into_iter().enumerate() {
        let mac = control::underlay_mac(&node.hostname)
            .unwrap_or_else(|e| panic!("{e:#}"))
            .unwrap_or_else(|| panic!("{} is not in the netmap", node.hostname));
        let guest = Guest {
            lan: vec![lan.port(&node.hostname, &mac)],
            forwards: match i {
                0 => core_lan.clone(),
                1 => data_lan.clone(),
                _ => Vec::new(),
            },
            // Three guests share two cores.
            cpus: Some(1),
        };
        booting.push(node.launch(&format!("fleet-{}", node.name), &machine(i), &guest));
    }
    let running = wait_all([&mut core, &mut data, &mut media], booting, "fleet");
    let [core_vm, data_vm, media_vm]: [Running; 3] = running
        .try_into()
        .unwrap_or_else(|_| unreachable!("three nodes, three guests"));
    eprintln!(
        "fleet: time to ready (status line, from QEMU start): nxcore {:.1}s, datacore {:.1}s, media {:.1}s; fleet {:.1}s",
        core_vm.took.as_secs_f64(),
        data_vm.took.as_secs_f64(),
        media_vm.took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    for node in [&core, &data, &media] {
        eprintln!(
            "fleet: agent steps of {} (wall s): {}",
            node.hostname,
            step_times(&node.status)
        );
    }
    for (node, vm) in [(&core, &core_vm), (&data, &data_vm), (&media, &media_vm)] {
        vm.assert_complete(node);
    }
    check_each_node(&core, &data, &media);
    let nodes = [
        ("nxcore", &core_vm),
        ("datacore", &data_vm),
        ("media", &media_vm),
    ];
    for (host, vm) in nodes {
        let status = vm.wait_status(Duration::from_secs(60), |s| s["state"] == "complete");
        assert_eq!(
            step(&status, "tailscale")["state"],
            "done",
            "{host}: {status:#}"
        );
    }
    check_flows(&nodes);
    check_firewall(&core_vm, &core_lan, &data_vm, &data_lan);
    // core's Prometheus and Loki through SSH, as an admin reaches them.
    let prometheus = core_vm.ssh.tunnel(9090);
    let loki = core_vm.ssh.tunnel(3100);
    check_scrapes(prometheus.port);
    // A node goes down: data's node_exporter stops. The alert is checked
    // after the other checks, which its `for: 1m` and Alertmanager's
    // group_wait overlap.
    check_alert_rules(prometheus.port);
    data_vm
        .ssh
        .run("sudo systemctl stop prometheus-node-exporter.service");
    let stopped = Instant::now();
    check_postgres_from_core(&core_vm);
    check_api_role(&data_vm);
    check_syncthing_login(&core_vm);
    check_portainer_admin_file(&core_vm);
    check_logs_reach_core(&data_vm, loki.port);
    check_backup_and_restore(&data_vm);
    check_core_backup(&core_vm);
    check_container_health(prometheus.port);
    check_node_down_alert(&webhook, stopped);
    drop((prometheus, loki));
    check_preloaded_store(&data, &data_vm);
    // The guests go before the slot: the next test's must not overlap them.
    drop((core_vm, data_vm, media_vm));
    drop(slot);
}

/// data's engine holds what the build wrote into its store (#18): every
/// image under its tag with its locked repo digest; `docker save`
/// reproduces the layers' diff IDs (the engine rebuilds each layer from
/// the tar-split and the unpacked files and checks it); a `docker pull`
/// of an image sharing the Debian layer reuses that layer, and
/// `docker image rm` removes the pulled image and leaves PostgreSQL alone.
fn check_preloaded_store(data: &Node, vm: &Running) {
    let started = Instant::now();
    let manifest = image_file(&data.image, "/etc/nodeforge/stacks.toml").unwrap();
    let manifest = nodeforge_firstboot::stacks::StacksManifest::from_toml(&manifest).unwrap();
    let listed = vm.ssh.run(
        "sudo docker image ls --no-trunc --digests --format '{{.Repository}}:{{.Tag}} {{.Digest}} {{.ID}}'",
    );
    for im in manifest.stacks.iter().flat_map(|s| &s.images) {
        let want = format!("{} {} {}", im.tag, im.digest, im.image_id);
        assert!(
            listed.lines().any(|l| l == want),
            "`docker image ls` lacks {want}:\n{listed}"
        );
    }
    // The stack's containers run under crun, the engine's default here
    // (overlays/docker-dns), with runc still known to the engine.
    let runtimes = vm.ssh.run(
        "sudo docker info --format '{{.DefaultRuntime}} {{range $k, $v := .Runtimes}}{{$k}},{{end}}'; \
         sudo docker ps -q | xargs sudo docker inspect --format '{{.HostConfig.Runtime}}' | sort -u",
    );
    let mut lines = runtimes.lines();
    let default = lines.next().unwrap_or_default();
    assert!(
        default.starts_with("crun ") && default.contains("runc,"),
        "engine runtimes: {runtimes}"
    );
    assert_eq!(lines.collect::<Vec<_>>(), ["crun"], "{runtimes}");
    // A small image: saving the 357 MB Debian layer under TCG took 100 s,
    // and the small one goes through the same reassembly and check.
    let saved_image = manifest
        .stacks
        .iter()
        .flat_map(|s| &s.images)
        .find(|im| im.reference.starts_with("minio/minio:"))
        .map(|im| im.tag.clone())
        .expect("data's stack has MinIO");
    let layers = vm.ssh.run(&format!(
        "sudo docker image inspect --format '{{{{range .RootFS.Layers}}}}{{{{println .}}}}{{{{end}}}}' {saved_image}"
    ));
    let saved = vm.ssh.run(&format!(
        "set -e; d=$(mktemp -d /var/tmp/save.XXXXXX); \
         sudo docker save {saved_image} | tar -x -C $d --wildcards 'blobs/sha256/*'; \
         cd $d/blobs/sha256; sha256sum *; cd /; rm -rf $d"
    ));
    assert!(!layers.trim().is_empty(), "{saved_image} has no layers?");
    for diff_id in layers.split_whitespace() {
        let hex = diff_id.trim_start_matches("sha256:");
        assert!(
            saved.lines().any(|l| l == format!("{hex}  {hex}")),
            "`docker save {saved_image}` did not reproduce layer {diff_id}:\n{saved}"
        );
    }

    let registry = nodeforge::oci::fixture::TestRegistry::start()
        .unwrap_or_else(|e| panic!("starting docker-registry: {e:#}"));
    let loki = qemu_tests::debian_images::image("grafana/loki:3.2.1")
        .unwrap_or_else(|e| panic!("{e:#}"))
        .expect("Loki's stand-in is built on the Debian layer");
    registry
        .push_image_gzip("grafana/loki", Some("3.2.1"), &loki)
        .unwrap();
    let pulled = vm.ssh.run_with_tunnel(
        5000,
        &registry.addr,
        "sudo docker pull 127.0.0.1:5000/grafana/loki:3.2.1",
    );
    assert!(
        pulled.contains("Already exists"),
        "the pull fetched the Debian layer again instead of reusing the preloaded one:\n{pulled}"
    );
    let removed = vm
        .ssh
        .run("sudo docker image rm 127.0.0.1:5000/grafana/loki:3.2.1");
    assert!(removed.contains("Deleted: sha256:"), "{removed}");
    let ready = vm.ssh.run(
        "sudo docker exec $(sudo docker ps -qf label=com.docker.compose.service=postgres) \
         sh -c '$(ls -d /usr/lib/postgresql/*/bin)/pg_isready'",
    );
    assert!(ready.contains("accepting connections"), "{ready}");
    eprintln!(
        "fleet: preloaded store checked on datacore (image ls, save, pull, rm) in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// `name wall_s` of each step that ran, from a status.json.
fn step_times(status: &serde_json::Value) -> String {
    status["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .filter_map(|s| {
                    Some(format!(
                        "{} {:.1}",
                        s["name"].as_str()?,
                        s["wall_ms"].as_f64()? / 1000.0
                    ))
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// What each role's own boot checked: every service healthy, the secrets
/// made on the node, the fleet in core's Prometheus configuration, the
/// media disk formatted and mounted.
fn check_each_node(core: &Node, data: &Node, media: &Node) {
    assert_all_healthy(&core.status, &[LOGS, CORE]);
    assert_all_healthy(&data.status, &[LOGS, DATA]);
    assert_all_healthy(&media.status, &[LOGS, MEDIA]);
    // The engine found every image in its store: nothing loaded at boot,
    // and no registry was running (prepare() stops it before the build).
    for node in [core, data, media] {
        let detail = step(&node.status, "containers")["detail"]
            .as_str()
            .unwrap_or("");
        assert!(
            detail.contains("images preloaded, none loaded"),
            "{}: {detail}",
            node.name
        );
    }
    // A compose healthcheck counts as the engine says: data's PostgreSQL.
    let postgres = data.status["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["service"] == "postgres"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(postgres["health"], "healthy", "{postgres:#}");
    assert_eq!(
        step(&core.status, "stack-secrets")["detail"],
        "11 secrets of 1 stacks: 9 generated, 2 from the seed, 0 kept"
    );
    assert_eq!(
        step(&data.status, "stack-secrets")["detail"],
        "8 secrets of 1 stacks: 6 generated, 2 from the seed, 0 kept"
    );
    let storage = step(&media.status, "storage");
    assert_eq!(storage["state"], "done", "{storage:#}");
    assert!(
        storage["detail"].as_str().unwrap().contains("/srv/media"),
        "{storage:#}"
    );
    let compose = image_file(&media.image, "/etc/nodeforge/stacks/media/compose.yaml").unwrap();
    for p in ["/srv/media/music:/music:ro", "/srv/media/share:/w"] {
        assert!(compose.contains(p), "{p} missing from:\n{compose}");
    }
    let compose = image_file(&core.image, "/etc/nodeforge/stacks/core/compose.yaml").unwrap();
    assert!(compose
        .contains("/etc/nodeforge/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"));
    let logs = image_file(&core.image, "/etc/nodeforge/stacks/logs/compose.yaml").unwrap();
    assert!(
        logs.contains("http://host.docker.internal:3100/loki/api/v1/push"),
        "{logs}"
    );
    // Secrets are made on the node, never baked.
    assert!(image_file(&core.image, "/var/lib/nodeforge/secrets/core.env").is_none());
}

/// core's real Prometheus loaded the role's prometheus.yml and scrapes
/// every booted node's node_exporter and data's postgres_exporter by their
/// MagicDNS names: `up == 1`.
fn check_scrapes(port: u16) {
    let wanted = [
        "datacore.tail79107c.ts.net:9100",
        "datacore.tail79107c.ts.net:9187",
        "media.tail79107c.ts.net:9100",
    ];
    let limit = Instant::now() + Duration::from_secs(300);
    loop {
        let body = http_get(port, "/api/v1/query?query=up");
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("Prometheus's answer is not JSON ({e}): {body}"));
        let ups: Vec<(String, String)> = v["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("no result in {v:#}"))
            .iter()
            .map(|r| {
                (
                    r["metric"]["instance"].as_str().unwrap_or("?").to_owned(),
                    r["value"][1].as_str().unwrap_or("?").to_owned(),
                )
            })
            .collect();
        let all_up = wanted
            .iter()
            .all(|w| ups.iter().any(|(i, u)| i == w && u == "1"));
        if all_up || Instant::now() > limit {
            for (instance, up) in &ups {
                eprintln!("fleet: scrape target {instance}: up {up}");
            }
            assert!(
                all_up,
                "not every fleet node is up in core's Prometheus: {ups:?}"
            );
            // The role's prometheus.yml loaded with no error.
            let metrics = http_get(port, "/metrics");
            assert!(
                metrics
                    .lines()
                    .any(|l| l == "prometheus_config_last_reload_successful 1"),
                "core's Prometheus did not load its configuration: {}",
                metrics
                    .lines()
                    .filter(|l| l.starts_with("prometheus_config_"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            return;
        }
        std::thread::sleep(Duration::from_secs(10));
    }
}

/// A line written to data's journal reaches core's Loki through data's
/// logs stack (its Alloy config's MagicDNS URL, the policy's data ->
/// core:3100), labelled with data's host name and role; so does a line a
/// container prints, labelled with the container.
fn check_logs_reach_core(data: &Running, loki_port: u16) {
    let marker = format!("fleet-log-marker-{}", std::process::id());
    data.ssh.run(&format!("logger -t fleet-test {marker}"));
    let (stream, streams) = find_in_loki(loki_port, "{host=\"datacore\"}", &marker);
    eprintln!(
        "fleet: data's journal line reached core's Loki in stream {stream}; {streams} streams from datacore"
    );
    assert_eq!(stream["role"], "data", "{stream:#}");
    // A container's output goes the same way (the engine's journald log
    // driver), labelled with the container's name: a container of the
    // PostgreSQL image that prints a line.
    let marker = format!("fleet-container-marker-{}", std::process::id());
    data.ssh.run(&format!(
        "sudo docker run --rm --name fleet-log-check --network none --entrypoint /bin/echo \
         $(sudo docker inspect --format '{{{{.Config.Image}}}}' \
           $(sudo docker ps -qf label=com.docker.compose.service=postgres)) {marker}"
    ));
    find_in_loki(
        loki_port,
        "{host=\"datacore\",container=\"fleet-log-check\"}",
        &marker,
    );
    eprintln!("fleet: a container's output on datacore reached core's Loki");
}

/// Asks core's Loki for `selector`'s streams until one holds a line with
/// `marker` (3 minutes at most): that stream's labels, and how many
/// streams matched.
fn find_in_loki(loki_port: u16, selector: &str, marker: &str) -> (serde_json::Value, usize) {
    let encoded: String = selector
        .bytes()
        .map(|b| match b {
            b'{' => "%7B".to_owned(),
            b'}' => "%7D".to_owned(),
            b'"' => "%22".to_owned(),
            b'=' => "%3D".to_owned(),
            b',' => "%2C".to_owned(),
            b => (b as char).to_string(),
        })
        .collect();
    let query = format!("/loki/api/v1/query_range?query={encoded}");
    let limit = Instant::now() + Duration::from_secs(180);
    loop {
        let body = http_get(loki_port, &query);
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("Loki's answer is not JSON ({e}): {body}"));
        let streams = v["data"]["result"].as_array().cloned().unwrap_or_default();
        let found = streams.iter().find(|s| {
            s["values"].as_array().is_some_and(|vals| {
                vals.iter()
                    .any(|x| x[1].as_str().is_some_and(|l| l.contains(marker)))
            })
        });
        if let Some(s) = found {
            return (s["stream"].clone(), streams.len());
        }
        assert!(
            Instant::now() < limit,
            "{marker} never reached core's Loki; {} streams match {selector}",
            streams.len()
        );
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// GET `path` from 127.0.0.1:`port` (HTTP/1.0): the body.
fn http_get(port: u16, path: &str) -> String {
    let limit = Instant::now() + Duration::from_secs(120);
    loop {
        match try_get(port, path) {
            Ok(body) => return body,
            Err(e) if Instant::now() < limit => {
                eprintln!("fleet: GET {path}: {e}; again");
                std::thread::sleep(Duration::from_secs(5));
            }
            Err(e) => panic!("GET 127.0.0.1:{port}{path}: {e}"),
        }
    }
}

fn try_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {text:?}")))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("answer: {head}")));
    }
    Ok(body.to_owned())
}

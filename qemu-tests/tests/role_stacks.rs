//! The core and media roles built and booted with their stacks (the data
//! role boots in tailnet.rs, which also checks its join): stand-in images
//! under the public names, see qemu_tests::stacks. status.json must report
//! every service healthy.

use qemu_tests::stacks::{assert_all_healthy, build_and_boot, image_file, step, GOOD_KEY, LOGS};

#[test]
fn core_role_boots_with_its_gateway_and_monitoring_up() {
    let b = build_and_boot("qemu-tests/profiles/role-core.toml", GOOD_KEY, &[], None);
    assert_all_healthy(
        &b.status,
        &[
            LOGS,
            (
                "core",
                &[
                    "traefik",
                    "authelia",
                    "n8n",
                    "uptime-kuma",
                    "portainer",
                    "landing",
                    "prometheus",
                    "grafana",
                    "loki",
                    "cadvisor",
                ],
            ),
        ],
    );
    assert_eq!(
        step(&b.status, "stack-secrets")["detail"],
        "5 secrets of 1 stacks: 5 generated, 0 from the seed, 0 kept"
    );
    // The Prometheus configuration the stack mounts lists the fleet.
    let prom = image_file(&b.image, "/etc/nodeforge/prometheus/prometheus.yml")
        .expect("prometheus.yml in the image");
    for target in [
        "datacore.tail79107c.ts.net:9100",
        "datacore.tail79107c.ts.net:9187",
        "ainode.tail79107c.ts.net:9100",
        "workspace.tail79107c.ts.net:9100",
        "media.tail79107c.ts.net:9100",
        "sentinel.tail79107c.ts.net:9100",
    ] {
        assert!(prom.contains(target), "{target} missing from:\n{prom}");
    }
    let compose = image_file(&b.image, "/etc/nodeforge/stacks/core/compose.yaml").unwrap();
    assert!(compose
        .contains("/etc/nodeforge/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"));
    let logs = image_file(&b.image, "/etc/nodeforge/stacks/logs/compose.yaml").unwrap();
    assert!(
        logs.contains("http://host.docker.internal:3100/loki/api/v1/push"),
        "{logs}"
    );
    // Secrets are made on the node, never baked.
    assert!(image_file(&b.image, "/var/lib/nodeforge/secrets/core.env").is_none());
}

#[test]
fn media_role_boots_with_its_data_disk_and_streaming_services_up() {
    // The role's storage rule takes the largest disk of 64 GiB or more
    // for /srv/media: a blank sparse one is attached, formatted at first
    // boot and mounted before the stacks start.
    let b = build_and_boot(
        "qemu-tests/profiles/role-media.toml",
        GOOD_KEY,
        &[],
        Some(64),
    );
    let storage = step(&b.status, "storage");
    assert_eq!(storage["state"], "done", "{storage:#}");
    assert!(
        storage["detail"].as_str().unwrap().contains("/srv/media"),
        "{storage:#}"
    );
    assert_all_healthy(
        &b.status,
        &[
            LOGS,
            (
                "media",
                &["jellyfin", "navidrome", "copyparty", "snapserver"],
            ),
        ],
    );
    let compose = image_file(&b.image, "/etc/nodeforge/stacks/media/compose.yaml").unwrap();
    for p in ["/srv/media/music:/music:ro", "/srv/media/share:/w"] {
        assert!(compose.contains(p), "{p} missing from:\n{compose}");
    }
}

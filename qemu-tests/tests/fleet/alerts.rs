//! The fleet test's alerting checks: core's Prometheus loads the fleet's
//! rules and finds its Alertmanager; a node that goes down is notified to
//! the webhook the seed names.

use std::time::{Duration, Instant};

use qemu_tests::webhook::WebhookSink;

use super::http_get;

/// core's Prometheus loaded the fleet's alert rules (overlays/alerting) and
/// found its Alertmanager.
pub fn check_alert_rules(port: u16) {
    let rules: serde_json::Value = serde_json::from_str(&http_get(port, "/api/v1/rules"))
        .expect("Prometheus's /api/v1/rules is JSON");
    let names: Vec<&str> = rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter_map(|r| r["name"].as_str())
        .collect();
    // Every rule of the overlay's file is loaded.
    let file =
        qemu_tests::workspace_root().join("overlays/alerting/etc/nodeforge/prometheus/alerts.yml");
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    let in_file: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(
        in_file.contains(&"NodeDown"),
        "{}: {in_file:?}",
        file.display()
    );
    for wanted in &in_file {
        assert!(
            names.contains(wanted),
            "rule {wanted} not loaded: {rules:#}"
        );
    }
    let limit = Instant::now() + Duration::from_secs(120);
    loop {
        let am: serde_json::Value =
            serde_json::from_str(&http_get(port, "/api/v1/alertmanagers")).unwrap_or_default();
        let active = am["data"]["activeAlertmanagers"]
            .as_array()
            .map_or(0, Vec::len);
        if active == 1 {
            return;
        }
        assert!(
            Instant::now() < limit,
            "core's Prometheus has no active Alertmanager: {am:#}"
        );
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// The NodeDown rule fired for data's stopped node_exporter and core's
/// Alertmanager posted it to the webhook the seed named.
pub fn check_node_down_alert(webhook: &WebhookSink, stopped: Instant) {
    let down = "datacore.tail79107c.ts.net:9100";
    let delivery = webhook.wait_for(Duration::from_secs(400), |d| {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&d.body) else {
            return false;
        };
        v["alerts"].as_array().into_iter().flatten().any(|a| {
            a["status"] == "firing"
                && a["labels"]["alertname"] == "NodeDown"
                && a["labels"]["instance"] == down
        })
    });
    eprintln!(
        "fleet: NodeDown for {down} reached the webhook {:.0} s after its exporter stopped ({} at {})",
        stopped.elapsed().as_secs_f64(),
        delivery.body.len(),
        delivery.path
    );
    assert_eq!(delivery.path, "/alerts");
    // Nothing fired for the booted nodes that stayed up. (The fleet's
    // other nodes, in the profile's fleet but not booted here, are down
    // from the start and fire too.)
    for d in webhook.deliveries() {
        let v: serde_json::Value = serde_json::from_str(&d.body).unwrap_or_default();
        for a in v["alerts"].as_array().into_iter().flatten() {
            let instance = a["labels"]["instance"].as_str().unwrap_or_default();
            assert!(
                a["labels"]["alertname"] != "NodeDown"
                    || !["media.tail79107c.ts.net:9100", "host.docker.internal:9100"]
                        .contains(&instance),
                "NodeDown fired for a node that is up: {a:#}"
            );
        }
    }
}

/// Every node exports its compose containers' health through
/// node_exporter (overlays/container-health's timer), which core's
/// Prometheus scrapes for ContainerUnhealthy: media's services are there,
/// healthy.
pub fn check_container_health(port: u16) {
    let limit = Instant::now() + Duration::from_secs(240);
    loop {
        let body = http_get(
            port,
            "/api/v1/query?query=nodeforge_container_healthy%7Binstance%3D%22media.tail79107c.ts.net%3A9100%22%7D",
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let series: Vec<(String, String)> = v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    format!(
                        "{}/{}",
                        r["metric"]["stack"].as_str().unwrap_or("?"),
                        r["metric"]["service"].as_str().unwrap_or("?")
                    ),
                    r["value"][1].as_str().unwrap_or("?").to_owned(),
                )
            })
            .collect();
        let jellyfin = series.iter().find(|(s, _)| s == "media/jellyfin");
        if let Some((_, healthy)) = jellyfin {
            eprintln!("fleet: media's containers in core's Prometheus: {series:?}");
            assert_eq!(healthy, "1", "{series:?}");
            assert!(series.iter().all(|(_, h)| h == "1"), "{series:?}");
            return;
        }
        assert!(
            Instant::now() < limit,
            "media's nodeforge_container_healthy never reached core's Prometheus: {body}"
        );
        std::thread::sleep(Duration::from_secs(10));
    }
}

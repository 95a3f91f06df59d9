//! Alerting (overlays/alerting): core and controlplane carry the fleet's
//! alert rules and an Alertmanager whose notifier comes from the profile's
//! vars, its URL a compose secret file, never the configuration. The boot
//! tests run them (qemu-tests fleet: a rule fires and reaches a webhook;
//! single_hosts: controlplane's Alertmanager is ready).

use crate::support::overlay::{plan, render, source};
use crate::support::{read_text, repo_root};
use nodeforge::profile::ProbeCheck;

const ALERTMANAGER_YML: &str = "/etc/nodeforge/alertmanager/alertmanager.yml";

/// What issue #23 asks the rules to cover, by the alert that does.
const REQUIRED: [&str; 5] = [
    "NodeDown",           // a node down
    "DiskAbove85Percent", // a disk above 85 %
    "ContainerUnhealthy", // a service unhealthy
    "ServiceDown",        // a scraped service not answering
    "BackupStale",        // a backup older than a day
];

#[test]
fn core_and_controlplane_have_rules_an_alertmanager_and_its_secret() {
    for profile in ["profiles/core.toml", "profiles/controlplane.toml"] {
        let plan = plan(profile);
        let rules = source(&plan, "/etc/nodeforge/prometheus/alerts.yml");
        for alert in REQUIRED {
            assert!(
                rules.contains(&format!("- alert: {alert}\n")),
                "{profile}: {alert}"
            );
        }
        let stack = plan
            .profile
            .stacks
            .iter()
            .find(|s| s.name == plan.profile.role)
            .unwrap_or_else(|| panic!("{profile} has no stack of its role"));
        assert!(
            stack.secrets.iter().any(|s| s == "ALERT_NOTIFY_URL"),
            "{profile}: {:?}",
            stack.secrets
        );
        assert!(
            stack
                .images
                .iter()
                .any(|i| i == "prom/alertmanager:v0.28.1"),
            "{profile}"
        );
        let ready = ProbeCheck::Http("http://127.0.0.1:9093/-/ready".into());
        assert!(
            stack
                .probes
                .iter()
                .any(|p| p.service == "alertmanager" && p.check == ready),
            "{profile}"
        );
        // core's prometheus.yml comes from its overlay; controlplane's is
        // inline in its compose file.
        let prometheus_yml = plan
            .overlay_files
            .iter()
            .find(|f| f.target == "/etc/nodeforge/prometheus/prometheus.yml")
            .map(|f| read_text(&f.source))
            .unwrap_or_default();
        let compose = read_text(&repo_root().join("stacks").join(&stack.compose));
        for wanted in [
            "/etc/nodeforge/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro",
            "/etc/nodeforge/alertmanager/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro",
            "  alert_notify_url:\n    environment: ALERT_NOTIFY_URL\n",
            "    secrets:\n      - alert_notify_url\n",
            // Alertmanager's own port stays on the node.
            "      - \"127.0.0.1:9093:9093\"\n",
            "- /etc/prometheus/alerts.yml\n",
            // Alerts go to the stack's Alertmanager (not only a scrape).
            "alerting:\n",
            "alertmanagers:\n",
            "- targets: ['alertmanager:9093']\n",
        ] {
            assert!(
                compose.contains(wanted) || prometheus_yml.contains(wanted),
                "{profile}: {wanted:?} in neither its compose file nor prometheus.yml"
            );
        }
    }
}

#[test]
fn the_notifier_reads_its_url_from_the_secret_file_and_a_wrong_one_is_named() {
    let core = plan("profiles/core.toml");
    let webhook = render(&core, ALERTMANAGER_YML, |_| {}).unwrap();
    assert!(
        webhook.contains("    webhook_configs:\n      - url_file: /run/secrets/alert_notify_url\n"),
        "{webhook}"
    );
    assert!(!webhook.contains("slack_configs"), "{webhook}");
    let slack = render(&core, ALERTMANAGER_YML, |v| {
        v["alert_notifier"] = "slack".into();
        v["alert_slack_channel"] = "#ops".into();
    })
    .unwrap();
    assert!(
        slack.contains(
            "    slack_configs:\n      - api_url_file: /run/secrets/alert_notify_url\n        channel: \"#ops\"\n"
        ),
        "{slack}"
    );
    // controlplane sets no vars: the defaults are a webhook.
    let cp = render(
        &plan("profiles/controlplane.toml"),
        ALERTMANAGER_YML,
        |_| {},
    )
    .unwrap();
    assert!(cp.contains("webhook_configs:"), "{cp}");
    let err = render(&core, ALERTMANAGER_YML, |v| {
        v["alert_notifier"] = "pager".into();
    })
    .unwrap_err();
    assert!(
        err.contains("vars.alert_notifier is `pager`: choose \"webhook\" or \"slack\""),
        "{err}"
    );
}

/// Every fleet node (profiles/node.toml) exports its containers' health
/// for ContainerUnhealthy, from a timer.
#[test]
fn every_node_exports_its_containers_health() {
    for profile in [
        "profiles/node.toml",
        "profiles/media.toml",
        "profiles/sentinel.toml",
    ] {
        let plan = plan(profile);
        for t in [
            "/usr/libexec/nodeforge/container-health",
            "/etc/systemd/system/timers.target.wants/nodeforge-container-health.timer",
        ] {
            assert!(
                plan.overlay_files.iter().any(|f| f.target == t),
                "{profile}: {t} is not in the image"
            );
        }
    }
    let script = read_text(
        &repo_root().join("overlays/container-health/usr/libexec/nodeforge/container-health"),
    );
    assert!(
        script.contains("nodeforge_container_healthy{stack="),
        "{script}"
    );
}

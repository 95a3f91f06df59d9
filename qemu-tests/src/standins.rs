//! What the busybox stand-ins of crate::stacks answer: the port each
//! listens on, the health paths the role's probes and compose
//! healthchecks ask for, the programs its healthchecks run and the
//! environment its real image has.

use std::collections::BTreeMap;

/// The port each stand-in listens on: the container port its service's
/// compose entry publishes (and the profile's probe reaches).
pub const PORTS: &[(&str, u16)] = &[
    // core
    ("traefik:v3.1.6", 80),
    ("authelia/authelia:4.38.17", 9091),
    ("n8nio/n8n:1.64.3", 5678),
    ("louislam/uptime-kuma:1.23.15", 3001),
    ("portainer/portainer-ce:2.21.4", 9000),
    ("grafana/grafana:11.2.2", 3000),
    ("gcr.io/cadvisor/cadvisor:v0.49.1", 8080),
    ("axllent/mailpit:v1.20.7", 8025),
    // data
    ("minio/minio:RELEASE.2024-10-13T13-34-11Z", 9000),
    ("getmeili/meilisearch:v1.10.3", 7700),
    ("postgrest/postgrest:v12.2.3", 3000),
    ("prodrigestivill/postgres-backup-local:16", 8080),
    // media
    ("jellyfin/jellyfin:10.9.11", 8096),
    ("deluan/navidrome:0.53.3", 4533),
    ("copyparty/ac:1.15.9", 3923),
    ("ivdata/snapserver:v0.28.0", 1780),
    // controlplane (and MinIO, as data's)
    ("ollama/ollama:0.3.14", 11434),
    ("onerahmet/openai-whisper-asr-webservice:v1.6.0", 9000),
    ("qdrant/qdrant:v1.12.1", 6333),
    // ai (and Ollama, Qdrant as controlplane's)
    ("ghcr.io/open-webui/open-webui:v0.3.35", 8080),
    // cloud
    ("hashicorp/consul:1.19.2", 8500),
    ("ghcr.io/danny-avila/librechat:v0.7.5", 3080),
    ("mongo:7.0.14", 27017),
    ("nextcloud:29.0.8-apache", 80),
    ("onlyoffice/documentserver:8.1.3", 80),
    ("netdata/netdata:v1.47.4", 19999),
    ("containrrr/watchtower:1.7.1", 8080),
    // observability
    ("grafana/tempo:2.6.1", 3200),
    // workspace
    ("codercom/code-server:4.93.1", 8443),
    ("quay.io/jupyterhub/configurable-http-proxy:4.6.2", 8000),
    ("quay.io/jupyterhub/k8s-singleuser-sample:4.0.0", 8081),
    ("jgraph/drawio:24.7.17", 8080),
    ("excalidraw/excalidraw:latest", 80),
    ("etherpad/etherpad:2.2.6", 9001),
    // sentinel (arm64; blackbox_exporter is Debian's)
    ("pihole/pihole:2024.07.0", 80),
    ("lscr.io/linuxserver/speedtest-tracker:0.21.2", 80),
];

/// The paths each image's health checks ask for: the HTTP probes of the
/// services that run it and the http:// URLs in those services' compose
/// entries (healthchecks run inside the container). The image's stand-in
/// answers 200 on them, as the service it stands for does when healthy.
/// Per image, so one service's `/healthz` file does not shadow another's
/// `/healthz/readiness` directory.
pub fn health_paths(p: &nodeforge::profile::Profile) -> BTreeMap<String, Vec<String>> {
    use nodeforge::profile::ProbeCheck;
    let mut paths: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for st in &p.stacks {
        let text = std::fs::read_to_string(&st.compose)
            .unwrap_or_else(|e| panic!("reading {}: {e}", st.compose.display()));
        let services = compose_services(&text);
        let image_of = |block: &str| {
            block
                .split("images[\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .map(str::to_owned)
        };
        for (_, block) in &services {
            if let Some(image) = image_of(block) {
                paths.entry(image).or_default().extend(url_paths(block));
            }
        }
        // A probe goes to the container publishing its port (JupyterHub's
        // hub is probed through its proxy's port), else to its service's.
        for probe in &st.probes {
            let ProbeCheck::Http(url) = &probe.check else {
                continue;
            };
            let port = url
                .trim_start_matches("http://")
                .split('/')
                .next()
                .and_then(|host| host.rsplit_once(':'))
                .map(|(_, p)| p.to_owned());
            let publisher = port.and_then(|port| {
                services
                    .iter()
                    .find(|(_, b)| publishes(b, &port))
                    .and_then(|(_, b)| image_of(b))
            });
            let own = services
                .iter()
                .find(|(name, _)| *name == probe.service)
                .and_then(|(_, b)| image_of(b));
            if let Some(image) = publisher.or(own) {
                paths.entry(image).or_default().extend(url_paths(url));
            }
        }
    }
    paths
        .into_iter()
        .map(|(image, set)| (image, set.into_iter().collect()))
        .collect()
}

/// Whether a compose entry publishes host port `port` (`- "P:C"`,
/// `- "ADDR:P:C"`, with or without quotes and a protocol).
fn publishes(block: &str, port: &str) -> bool {
    block.lines().any(|l| {
        let l = l.trim().trim_start_matches('-').trim().trim_matches('"');
        let parts: Vec<&str> = l.split(':').collect();
        parts.len() >= 2 && parts[parts.len() - 2] == port
    })
}

/// The services of a compose template, each with its entry's text: the
/// keys two spaces in under the top-level `services:`.
fn compose_services(text: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut in_services = false;
    let mut current: Option<(&str, usize)> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let top_level = !line.starts_with(' ')
            && !line.trim().is_empty()
            && !line.starts_with('#')
            && !line.starts_with('{');
        let service = line
            .strip_prefix("  ")
            .filter(|l| !l.starts_with(' ') && !l.starts_with('#'))
            .and_then(|l| l.trim_end().strip_suffix(':'))
            .filter(|k| {
                k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
            });
        if top_level || (in_services && service.is_some()) {
            if let Some((name, from)) = current.take() {
                out.push((name, &text[from..start]));
            }
        }
        if top_level {
            in_services = line.trim_end() == "services:";
        } else if in_services {
            if let Some(name) = service {
                current = Some((name, start));
            }
        }
    }
    if let Some((name, from)) = current {
        out.push((name, &text[from..]));
    }
    out
}

/// The paths of the http:// URLs in `text` (no query, no fragment).
fn url_paths(text: &str) -> Vec<String> {
    text.match_indices("http://")
        .filter_map(|(i, m)| {
            let rest = &text[i + m.len()..];
            let end = rest
                .find(|c: char| c.is_whitespace() || "\"'],;`$?#{}".contains(c))
                .unwrap_or(rest.len());
            let url = &rest[..end];
            url.find('/').map(|slash| url[slash..].to_owned())
        })
        .filter(|path| {
            path.trim_matches('/')
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_.-".contains(&b))
        })
        .collect()
}

/// Programs of the real images that their compose healthchecks or the
/// role's units run inside the container; each stand-in gets a shim of
/// that path that succeeds while the stand-in answers (see
/// nodeforge::oci::fixture::stand_in_image).
pub const TOOLS: &[(&str, &[&str])] = &[
    ("mongo:7.0.14", &["/usr/bin/mongosh"]),
    ("containrrr/watchtower:1.7.1", &["/watchtower"]),
    // nodeforge-librechat-admin.service's `npm run create-user`, the
    // password on stdin.
    (
        "ghcr.io/danny-avila/librechat:v0.7.5",
        &["/usr/local/bin/npm"],
    ),
    // Pi-hole's own HEALTHCHECK asks its DNS with dig.
    ("pihole/pihole:2024.07.0", &["/usr/bin/dig"]),
];

/// Environment of the real images that the node's wiring must reckon
/// with, given to their stand-ins too (nodeforge::oci::fixture::
/// stand_in_image): Ollama's image asks for every
/// NVIDIA GPU (its Dockerfile's ENV, checked v0.3.x), which the ai stack
/// must override on a machine without one.
pub const IMAGE_ENV: &[(&str, &[&str])] = &[(
    "ollama/ollama:0.3.14",
    &[
        "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
        "NVIDIA_VISIBLE_DEVICES=all",
    ],
)];

#[cfg(test)]
mod tests {
    use super::{compose_services, publishes, url_paths};

    #[test]
    fn publishes_reads_the_host_port_of_a_mapping() {
        let block = "    ports:\n      - \"127.0.0.1:8000:8000\"\n      - \"53:53/udp\"\n";
        assert!(publishes(block, "8000"));
        assert!(publishes(block, "53"));
        assert!(!publishes(block, "80"));
    }

    #[test]
    fn compose_services_split_the_services_section_only() {
        let text = "# head\nservices:\n  web:\n    image: {{ images[\"a:1\"] }}\n    healthcheck:\n      test: [\"CMD\", \"wget\", \"http://127.0.0.1:80/healthz\"]\n\n  api:\n    image: {{ images[\"b:1\"] }}\nvolumes:\n  data:\n";
        let got = compose_services(text);
        assert_eq!(
            got.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ["web", "api"]
        );
        assert!(got[0].1.contains("/healthz") && !got[0].1.contains("b:1"));
        assert!(got[1].1.contains("b:1") && !got[1].1.contains("data"));
    }

    #[test]
    fn url_paths_take_the_path_of_each_url_without_query_or_quotes() {
        let text = r#"test: ["CMD", "wget", "-q", "--spider", "http://127.0.0.1:9090/-/ready"]
      - http://127.0.0.1:8200/v1/sys/health?standbyok=true
      url: "http://loki:3100/loki/api/v1/push"
      other: http://{{ gateway }}:80/
      bare: http://host"#;
        assert_eq!(
            url_paths(text),
            ["/-/ready", "/v1/sys/health", "/loki/api/v1/push"]
        );
    }
}

//! Start the baked compose stacks. The build wrote every image into the
//! engine's own store, so nothing is loaded: the step checks each image is
//! there under its tag (re-tagging one whose tag was removed), runs
//! `docker compose up -d` per stack with pulls forbidden, then waits
//! (bounded) until every service is healthy: its compose healthcheck says
//! so, or it runs and the profile's probe answers. Restarting crashed
//! services is the engine's job (restart policies).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use super::{Ctx, Outcome};
use crate::fsutil::{read_optional, under};
use crate::runner::Cmd;
use crate::stacks::{ImageEntry, ProbeEntry, StackEntry, StacksManifest, STACKS_MANIFEST_PATH};
use crate::status::ServiceStatus;

/// How long the engine may take to answer after boot while systemd still
/// reports docker.service starting. Generous: under load (five TCG guests
/// on two cores in CI, an SD card on a Pi) a healthy engine took over
/// 120 s; a failed unit ends the wait at once.
const ENGINE_WAIT: Duration = Duration::from_secs(600);
const UP_TIMEOUT: Duration = Duration::from_secs(600);
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_secs(2);

/// The baked stacks manifest, `None` when the image has none.
pub fn load_manifest(root: &std::path::Path) -> Result<Option<StacksManifest>> {
    let path = under(root, STACKS_MANIFEST_PATH);
    let Some(text) = read_optional(&path)? else {
        return Ok(None);
    };
    StacksManifest::from_toml(&text)
        .map(Some)
        .with_context(|| format!("parsing {}", path.display()))
}

pub fn containers(ctx: &mut Ctx<'_>) -> Result<Outcome> {
    let Some(manifest) = load_manifest(ctx.root)? else {
        return Ok(Outcome::Skipped("the image has no stacks".into()));
    };
    if manifest.stacks.is_empty() {
        return Ok(Outcome::Skipped("the image has no stacks".into()));
    }
    let started = Instant::now();
    wait_for_engine(ctx)?;
    let engine_secs = started.elapsed().as_secs_f64();

    let listed = ctx.runner.run(&docker([
        "image",
        "ls",
        "--no-trunc",
        "--format",
        "{{.ID}} {{.Repository}}:{{.Tag}}",
    ]))?;
    let all_images: Vec<&ImageEntry> = manifest.stacks.iter().flat_map(|s| &s.images).collect();
    let missing = missing_images(&all_images, &listed.stdout);
    if !missing.is_empty() {
        bail!(
            "{} of the image's container images are not in the engine's store \
             (/var/lib/docker): {}. The build writes them there; rebuild the image, \
             or `docker pull` them if the node is online",
            missing.len(),
            missing.join(", ")
        );
    }
    for (id, tag) in retags(&all_images, &listed.stdout) {
        ctx.runner
            .run(&docker(["tag", &id, &tag]))
            .with_context(|| format!("tagging image {id} as {tag}"))?;
    }

    let up_started = Instant::now();
    for s in &manifest.stacks {
        let up = compose(s).args([
            "up",
            "--detach",
            "--pull",
            "never",
            "--no-build",
            "--remove-orphans",
        ]);
        ctx.runner
            .run(&up.timeout(UP_TIMEOUT))
            .with_context(|| format!("starting stack {}", s.name))?;
    }
    let up_secs = up_started.elapsed().as_secs_f64();
    let health_started = Instant::now();

    let mut services = Vec::new();
    for s in &manifest.stacks {
        services.extend(wait_healthy(ctx, s)?);
    }
    let healthy = services.iter().filter(|s| s.healthy).count();
    let health_secs = health_started.elapsed().as_secs_f64();
    let detail = format!(
        "{} stacks up, {healthy}/{} services healthy, {} images preloaded, none loaded; \
         engine {engine_secs:.1} s, compose up {up_secs:.1} s, health {health_secs:.1} s",
        manifest.stacks.len(),
        services.len(),
        all_images.len()
    );
    let all_healthy = healthy == services.len();
    ctx.notes.services = Some(services);
    if !all_healthy {
        bail!(
            "{detail}: {}",
            unhealthy_summary(ctx.notes.services.as_deref().unwrap_or(&[]))
        );
    }
    Ok(Outcome::Done(detail))
}

fn docker<I, S>(args: I) -> Cmd
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    Cmd::new("docker").args(args).timeout(QUERY_TIMEOUT)
}

/// `docker compose` for one stack: its project name, file and `.env`.
pub fn compose(s: &StackEntry) -> Cmd {
    let mut c = docker(["compose", "--project-name", &s.name, "--file", &s.compose]);
    for env in s.env_file.iter().chain(&s.secrets_file) {
        c = c.args(["--env-file", env.as_str()]);
    }
    c
}

/// Units the engine needs; when systemd has given up on one, the engine
/// cannot come (the host firewall: the engine requires it, so that no
/// published port is open to the LAN without its rules).
const ENGINE_UNITS: [&str; 4] = [
    "docker.service",
    "docker.socket",
    "containerd.service",
    "nodeforge-firewall.service",
];

/// The engine starts alongside us; poll `docker info` until it answers.
/// docker.socket holds the first request until dockerd is up, so one poll
/// may itself time out. The wait ends early when systemd has given up on
/// a unit the engine needs (`failed`): waiting then only wastes the boot.
fn wait_for_engine(ctx: &Ctx<'_>) -> Result<()> {
    let start = Instant::now();
    let mut slept = Duration::ZERO;
    loop {
        let info = docker(["info", "--format", "{{.ServerVersion}}"]);
        let out = ctx.runner.output(&info)?;
        if out.success() {
            return Ok(());
        }
        let why = if out.timed_out {
            format!(
                "`docker info` timed out after {} s",
                QUERY_TIMEOUT.as_secs()
            )
        } else {
            out.stderr.trim().to_owned()
        };
        // One state per unit, in order (`inactive` for one the image lacks).
        let states = ctx
            .runner
            .output(&Cmd::new("systemctl").arg("is-failed").args(ENGINE_UNITS))?;
        let states: Vec<&str> = states.stdout.lines().map(str::trim).collect();
        let failed: Vec<&str> = ENGINE_UNITS
            .iter()
            .zip(&states)
            .filter(|(_, s)| **s == "failed")
            .map(|(u, _)| *u)
            .collect();
        if !failed.is_empty() {
            bail!(
                "the Docker engine cannot start: {} failed (see `journalctl -u {}`): {why}",
                failed.join(", "),
                failed[0]
            );
        }
        if slept.max(start.elapsed()) >= ENGINE_WAIT {
            bail!(
                "the Docker engine did not answer within {} s (docker.service is {}): {why}",
                ENGINE_WAIT.as_secs(),
                states.first().copied().unwrap_or("unknown")
            );
        }
        (ctx.sleep)(POLL);
        slept += POLL;
    }
}

/// `docker image ls` output (`<ID> <repo>:<tag>` lines) as (ID, name) pairs.
fn listed_images(image_ls: &str) -> BTreeSet<(String, String)> {
    image_ls
        .lines()
        .filter_map(|l| l.trim().split_once(' '))
        .map(|(id, name)| (id.to_owned(), name.trim().to_owned()))
        .collect()
}

/// The baked images whose ID the engine does not hold, as `tag (id)`.
pub fn missing_images(images: &[&ImageEntry], image_ls: &str) -> Vec<String> {
    let listed = listed_images(image_ls);
    let mut out = Vec::new();
    for im in images {
        let line = format!("{} ({})", im.tag, im.image_id);
        if !listed.iter().any(|(id, _)| *id == im.image_id) && !out.contains(&line) {
            out.push(line);
        }
    }
    out
}

/// Images the engine holds whose tag is gone (removed by hand, or an
/// interrupted retag): (ID, tag) to tag again.
pub fn retags(images: &[&ImageEntry], image_ls: &str) -> Vec<(String, String)> {
    let listed = listed_images(image_ls);
    let ids: BTreeSet<&String> = listed.iter().map(|(id, _)| id).collect();
    let mut out = Vec::new();
    for im in images {
        let pair = (im.image_id.clone(), im.tag.clone());
        if ids.contains(&im.image_id) && !listed.contains(&pair) && !out.contains(&pair) {
            out.push(pair);
        }
    }
    out
}

/// One line of `docker compose ps --format json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PsEntry {
    #[serde(rename = "Service")]
    pub service: String,
    #[serde(rename = "State", default)]
    pub state: String,
    #[serde(rename = "Health", default)]
    pub health: String,
    #[serde(rename = "ExitCode", default)]
    pub exit_code: i64,
}

/// Parses `docker compose ps --format json`: one object per line (compose
/// 2.21 and later) or one array (earlier).
pub fn parse_ps(text: &str) -> Result<Vec<PsEntry>> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(Vec::new());
    }
    if t.starts_with('[') {
        return serde_json::from_str(t).context("parsing `docker compose ps` output");
    }
    t.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .with_context(|| format!("parsing `docker compose ps` line {l:?}"))
        })
        .collect()
}

/// Each service's state, from its containers and its probe's result
/// (`None`: no probe declared).
pub fn service_status(
    stack: &str,
    service: &str,
    ps: &[PsEntry],
    probe: Option<(&ProbeEntry, Result<()>)>,
) -> ServiceStatus {
    let mut st = ServiceStatus {
        stack: stack.to_owned(),
        service: service.to_owned(),
        state: "missing".into(),
        healthy: false,
        health: None,
        probe: probe.as_ref().map(|(p, _)| probe_target(p)),
        detail: None,
    };
    let Some(c) = ps.iter().find(|e| e.service == service) else {
        st.detail = Some("no container".into());
        return st;
    };
    st.health = (!c.health.is_empty()).then(|| c.health.clone());
    if c.state != "running" {
        st.state = c.state.clone();
        if c.state == "exited" {
            st.detail = Some(format!("exit code {}", c.exit_code));
        }
        return st;
    }
    match c.health.as_str() {
        "" | "healthy" => {}
        other => {
            st.state = other.to_owned();
            return st;
        }
    }
    match probe {
        Some((_, Err(e))) => {
            st.state = "probe-failing".into();
            st.detail = Some(format!("{e:#}"));
        }
        _ => {
            st.healthy = true;
            st.state = if c.health == "healthy" || st.probe.is_some() {
                "healthy"
            } else {
                "running"
            }
            .into();
        }
    }
    st
}

fn probe_target(p: &ProbeEntry) -> String {
    match (&p.http, &p.tcp) {
        (Some(u), _) => format!("http {u}"),
        (None, Some(a)) => format!("tcp {a}"),
        (None, None) => "none".into(),
    }
}

/// Polls the stack until every service is healthy or its time is up.
fn wait_healthy(ctx: &Ctx<'_>, s: &StackEntry) -> Result<Vec<ServiceStatus>> {
    let names = ctx
        .runner
        .run(&compose(s).args(["config", "--services"]))
        .with_context(|| format!("listing the services of stack {}", s.name))?;
    let services: Vec<String> = names
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let limit = Duration::from_secs(s.health_timeout_secs);
    let start = Instant::now();
    let mut slept = Duration::ZERO;
    loop {
        let out = ctx
            .runner
            .run(&compose(s).args(["ps", "--all", "--format", "json"]))
            .with_context(|| format!("asking for the state of stack {}", s.name))?;
        let ps = parse_ps(&out.stdout)?;
        let states: Vec<ServiceStatus> = services
            .iter()
            .map(|svc| {
                let probe = s.probes.iter().find(|p| &p.service == svc);
                let result = probe.map(|p| (p, (ctx.probe)(p)));
                service_status(&s.name, svc, &ps, result)
            })
            .collect();
        if states.iter().all(|st| st.healthy) || slept.max(start.elapsed()) >= limit {
            return Ok(states);
        }
        (ctx.sleep)(POLL);
        slept += POLL;
    }
}

fn unhealthy_summary(services: &[ServiceStatus]) -> String {
    services
        .iter()
        .filter(|s| !s.healthy)
        .map(|s| match &s.detail {
            Some(d) => format!("{}/{} {} ({d})", s.stack, s.service, s.state),
            None => format!("{}/{} {}", s.stack, s.service, s.state),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The real probe: a TCP connect, or an HTTP GET answering 200.
pub fn probe(p: &ProbeEntry) -> Result<()> {
    let timeout = Duration::from_secs(5);
    if let Some(url) = &p.http {
        return crate::http::get(url, timeout).map(drop);
    }
    if let Some(addr) = &p.tcp {
        use std::net::ToSocketAddrs;
        let addrs: Vec<_> = addr
            .to_socket_addrs()
            .with_context(|| format!("resolving {addr}"))?
            .collect();
        let mut last = anyhow!("{addr} resolved to no address");
        for a in addrs {
            match std::net::TcpStream::connect_timeout(&a, timeout) {
                Ok(_) => return Ok(()),
                Err(e) => last = anyhow::Error::new(e).context(format!("connecting to {a}")),
            }
        }
        return Err(last);
    }
    bail!("probe has neither http nor tcp")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: char, tag: &str) -> ImageEntry {
        ImageEntry {
            reference: tag.into(),
            tag: tag.into(),
            digest: format!("sha256:{}", "d".repeat(64)),
            image_id: format!("sha256:{}", id.to_string().repeat(64)),
        }
    }

    #[test]
    fn present_images_need_nothing_untagged_ones_a_tag_and_missing_ones_are_named() {
        let (a, b, c) = (
            image('a', "r/a:1"),
            image('b', "r/b:1"),
            image('c', "r/c:1"),
        );
        let ls = format!(
            "sha256:{} r/a:1\nsha256:{} <none>:<none>\n",
            "a".repeat(64),
            "b".repeat(64)
        );
        assert_eq!(
            retags(&[&a, &b, &c, &b], &ls),
            vec![(b.image_id.clone(), "r/b:1".into())]
        );
        assert_eq!(
            missing_images(&[&a, &b, &c, &c], &ls),
            vec![format!("r/c:1 ({})", c.image_id)]
        );
        assert!(retags(&[&a], &ls).is_empty() && missing_images(&[&a], &ls).is_empty());
    }

    #[test]
    fn parses_ps_lines_and_arrays() {
        let line = r#"{"Name":"web-web-1","Service":"web","State":"running","Health":"healthy","ExitCode":0}"#;
        let two = format!(
            "{line}\n{}\n",
            line.replace("\"web\"", "\"db\"").replace("healthy", "")
        );
        let ps = parse_ps(&two).unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[1].service, "db");
        assert_eq!(ps[1].health, "");
        assert_eq!(parse_ps(&format!("[{line}]")).unwrap()[0].health, "healthy");
        assert!(parse_ps("").unwrap().is_empty());
        let e = format!("{:#}", parse_ps("not json").unwrap_err());
        assert!(
            e.starts_with("parsing `docker compose ps` line \"not json\": "),
            "{e}"
        );
    }

    #[test]
    fn service_health_from_state_healthcheck_and_probe() {
        let ps = |state: &str, health: &str| PsEntry {
            service: "web".into(),
            state: state.into(),
            health: health.into(),
            exit_code: 2,
        };
        let probe = ProbeEntry {
            service: "web".into(),
            http: Some("http://127.0.0.1:8080/".into()),
            tcp: None,
        };
        let st = |e: &[PsEntry], p: Option<Result<()>>| {
            service_status("s", "web", e, p.map(|r| (&probe, r)))
        };
        let s = st(&[ps("running", "healthy")], None);
        assert!(s.healthy && s.state == "healthy");
        let s = st(&[ps("running", "")], None);
        assert!(s.healthy && s.state == "running");
        let s = st(&[ps("running", "")], Some(Ok(())));
        assert!(
            s.healthy
                && s.state == "healthy"
                && s.probe.as_deref() == Some("http http://127.0.0.1:8080/")
        );
        let s = st(&[ps("running", "")], Some(Err(anyhow!("refused"))));
        assert!(!s.healthy && s.state == "probe-failing" && s.detail.as_deref() == Some("refused"));
        let s = st(&[ps("running", "starting")], Some(Ok(())));
        assert!(!s.healthy && s.state == "starting");
        let s = st(&[ps("running", "unhealthy")], None);
        assert!(!s.healthy && s.state == "unhealthy");
        let s = st(&[ps("exited", "")], None);
        assert!(!s.healthy && s.state == "exited" && s.detail.as_deref() == Some("exit code 2"));
        let s = st(&[], None);
        assert!(!s.healthy && s.state == "missing");
    }

    #[test]
    fn compose_command_names_project_file_and_env() {
        let s = StackEntry {
            name: "web".into(),
            compose: "/etc/nodeforge/stacks/web/compose.yaml".into(),
            env_file: Some("/etc/nodeforge/stacks/web/.env".into()),
            secrets: vec!["DB_PASSWORD".into()],
            secrets_file: Some("/var/lib/nodeforge/secrets/web.env".into()),
            health_timeout_secs: 10,
            images: vec![],
            probes: vec![],
        };
        assert_eq!(
            compose(&s).arg("ps").to_string(),
            "docker compose --project-name web --file /etc/nodeforge/stacks/web/compose.yaml --env-file /etc/nodeforge/stacks/web/.env --env-file /var/lib/nodeforge/secrets/web.env ps"
        );
    }
}

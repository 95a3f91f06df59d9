//! Machine-readable status (`/run/nodeforge/status.json`, copied to
//! `/var/lib/nodeforge/status.json`), its human rendering, and the per-step
//! wall/CPU measurements the boot tests report.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil::{atomic_write, under};

pub const RUN_STATUS_PATH: &str = "/run/nodeforge/status.json";
pub const PERSISTENT_STATUS_PATH: &str = "/var/lib/nodeforge/status.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Running,
    Complete,
    /// A step that only some things need failed (the tailnet join): the
    /// rest ran, and the run is retried until it succeeds.
    Degraded,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    Pending,
    Running,
    Done,
    Skipped,
    Failed,
}

/// One step's record. Done/skipped records are also what the journal keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepStatus {
    pub name: String,
    pub state: StepState,
    /// What the step did, or why it skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Machine-readable failure class, e.g. `key-expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// Wall time of the step in this agent process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_ms: Option<f64>,
    /// The agent process's own CPU time (user+system) spent in the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<f64>,
    /// CPU time of the programs the step ran (sfdisk, tailscale …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children_cpu_ms: Option<f64>,
    /// Set when the record comes from an earlier run (resumed boot).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub earlier_run: bool,
}

impl StepStatus {
    pub fn pending(name: &str) -> Self {
        StepStatus {
            name: name.to_string(),
            state: StepState::Pending,
            detail: None,
            error: None,
            reason: None,
            started_at: None,
            ended_at: None,
            wall_ms: None,
            cpu_ms: None,
            children_cpu_ms: None,
            earlier_run: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: RunState,
    pub role: String,
    pub profile: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Where the seed came from (a path or URL), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed_source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tailscale_ip: Option<String>,
    /// Outcome of the secret scrub and the search for leftovers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_at: String,
    pub updated_at: String,
    /// Totals for this agent process.
    pub agent_wall_ms: f64,
    pub agent_cpu_ms: f64,
    /// How many times the agent has started first boot on this machine
    /// (more than 1 after an interruption or a failed step).
    #[serde(default)]
    pub runs: u32,
    pub steps: Vec<StepStatus>,
    /// The compose stacks' services, as the containers step last saw them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceStatus>,
}

/// One compose service's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub stack: String,
    pub service: String,
    /// `healthy`, `running` (no healthcheck or probe), `starting`,
    /// `unhealthy`, `probe-failing`, `exited`, `missing` …
    pub state: String,
    pub healthy: bool,
    /// The compose healthcheck's verdict, when the service has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// The probe the profile declared (`http URL` or `tcp ADDR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Status {
    pub fn new(role: &str, profile: &str, steps: &[&str]) -> Self {
        let now = now_rfc3339();
        Status {
            state: RunState::Running,
            role: role.to_string(),
            profile: profile.to_string(),
            hostname: None,
            seed_source: None,
            seed_error: None,
            tailscale_ip: None,
            secrets: None,
            error: None,
            started_at: now.clone(),
            updated_at: now,
            agent_wall_ms: 0.0,
            agent_cpu_ms: 0.0,
            runs: 0,
            steps: steps.iter().map(|s| StepStatus::pending(s)).collect(),
            services: Vec::new(),
        }
    }

    pub fn step_mut(&mut self, name: &str) -> Option<&mut StepStatus> {
        self.steps.iter_mut().find(|s| s.name == name)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("Status always serialises") + "\n"
    }

    /// Writes the volatile copy in /run and, when `persist`, the copy under
    /// /var/lib that survives a reboot.
    pub fn write(&self, root: &Path, persist: bool) -> Result<()> {
        let json = self.to_json();
        atomic_write(&under(root, RUN_STATUS_PATH), json.as_bytes(), 0o644)?;
        if persist {
            atomic_write(&under(root, PERSISTENT_STATUS_PATH), json.as_bytes(), 0o644)?;
        }
        Ok(())
    }

    /// Reads the live status, falling back to the persistent copy.
    pub fn read(root: &Path) -> Result<Option<Status>> {
        for p in [RUN_STATUS_PATH, PERSISTENT_STATUS_PATH] {
            let path = under(root, p);
            if let Some(text) = crate::fsutil::read_optional(&path)? {
                let s = serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?;
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    /// Human-readable form for `nodeforge-firstboot status`.
    pub fn render(&self) -> String {
        let mut out = format!(
            "nodeforge-firstboot: {} (role {}, profile {})\n",
            match self.state {
                RunState::Running => "running",
                RunState::Complete => "complete",
                RunState::Degraded => "DEGRADED",
                RunState::Failed => "FAILED",
            },
            self.role,
            self.profile
        );
        let mut kv = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                out.push_str(&format!("  {k:<13}{v}\n"));
            }
        };
        kv("hostname:", &self.hostname);
        kv("seed:", &self.seed_source);
        kv("seed error:", &self.seed_error);
        kv("tailnet ip:", &self.tailscale_ip);
        kv("secrets:", &self.secrets);
        kv("error:", &self.error);
        out.push_str(&format!(
            "  updated:     {} (run {}, agent {:.0} ms wall, {:.1} ms cpu this run)\n",
            self.updated_at, self.runs, self.agent_wall_ms, self.agent_cpu_ms
        ));
        for s in &self.steps {
            let state = match s.state {
                StepState::Pending => "pending",
                StepState::Running => "running",
                StepState::Done => "done",
                StepState::Skipped => "skipped",
                StepState::Failed => "FAILED",
            };
            let timing = match (s.wall_ms, s.cpu_ms) {
                (Some(w), Some(c)) => format!(" [{w:.0} ms, cpu {c:.1} ms]"),
                _ => String::new(),
            };
            let prev = if s.earlier_run { " (earlier boot)" } else { "" };
            out.push_str(&format!("  {:<16}{state:<8}{timing}{prev}", s.name));
            if let Some(d) = &s.detail {
                out.push_str(&format!(" {d}"));
            }
            if let Some(e) = &s.error {
                let r = s.reason.as_deref().unwrap_or("error");
                out.push_str(&format!(" {r}: {e}"));
            }
            out.push('\n');
        }
        for s in &self.services {
            out.push_str(&format!("  service {}/{}: {}", s.stack, s.service, s.state));
            if let Some(p) = &s.probe {
                out.push_str(&format!(" (probe {p})"));
            }
            if let Some(d) = &s.detail {
                out.push_str(&format!(": {d}"));
            }
            out.push('\n');
        }
        out
    }
}

/// CPU time and wall clock at one instant, to measure a step.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    wall: std::time::Instant,
    self_cpu_us: u64,
    children_cpu_us: u64,
}

impl Sample {
    pub fn now() -> Self {
        Sample {
            wall: std::time::Instant::now(),
            self_cpu_us: rusage_us(libc::RUSAGE_SELF),
            children_cpu_us: rusage_us(libc::RUSAGE_CHILDREN),
        }
    }

    /// (wall ms, own CPU ms, children's CPU ms) since `self`.
    pub fn elapsed(&self) -> (f64, f64, f64) {
        let now = Sample::now();
        (
            now.wall.duration_since(self.wall).as_secs_f64() * 1000.0,
            now.self_cpu_us.saturating_sub(self.self_cpu_us) as f64 / 1000.0,
            now.children_cpu_us.saturating_sub(self.children_cpu_us) as f64 / 1000.0,
        )
    }
}

fn rusage_us(who: libc::c_int) -> u64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return 0;
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Current UTC time as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_millis())
}

pub(crate) fn rfc3339(secs: i64, millis: u32) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm), proleptic Gregorian.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_000_000, 5), "2026-11-18T11:06:40.005Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn measures_cpu_time() {
        let s = Sample::now();
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let (wall, cpu, _) = s.elapsed();
        assert!(
            wall > 0.0 && cpu >= 0.0 && cpu <= wall + 5.0,
            "{wall} {cpu}"
        );
    }

    #[test]
    fn writes_reads_and_renders() {
        let root = tempfile::tempdir().unwrap();
        let mut st = Status::new("core", "base", &["hostname", "grow-root"]);
        st.hostname = Some("n1".into());
        let h = st.step_mut("hostname").unwrap();
        h.state = StepState::Done;
        h.detail = Some("set to n1".into());
        h.wall_ms = Some(1.0);
        h.cpu_ms = Some(0.2);
        st.write(root.path(), true).unwrap();
        let back = Status::read(root.path()).unwrap().unwrap();
        assert_eq!(back, st);
        assert!(root.path().join("var/lib/nodeforge/status.json").exists());
        let text = back.render();
        assert!(
            text.contains("hostname        done") && text.contains("set to n1"),
            "{text}"
        );
        assert!(text.contains("grow-root       pending"), "{text}");
    }
}

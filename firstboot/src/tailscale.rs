//! Talking to the `tailscale` CLI: reading its state, classifying failures.
//! The join step itself lives in `steps::tailnet`.

use serde::Deserialize;

use crate::runner::{Cmd, CommandRunner, SpawnError};

/// Why joining the tailnet failed; callers (status, tests) branch on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TailscaleError {
    #[error("auth key expired or invalid: {0}")]
    KeyExpired(String),
    #[error("tag not permitted for this key: {0}")]
    TagNotPermitted(String),
    #[error("no network to reach the control server: {0}")]
    NoNetwork(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("the node is logged out and the seed carries no auth key")]
    NoAuthKey,
    #[error("this disk joined the tailnet on another machine ({0}); its tailnet state was moved aside so this machine does not pose as that node: stamp a new seed with an auth key (`nodeforge customize … --authkey-file`) and it joins as a new node")]
    ClonedDisk(String),
    #[error("{0}")]
    Other(String),
}

impl TailscaleError {
    /// Stable machine-readable name for status.json.
    pub fn reason(&self) -> &'static str {
        match self {
            TailscaleError::KeyExpired(_) => "key-expired",
            TailscaleError::TagNotPermitted(_) => "tag-not-permitted",
            TailscaleError::NoNetwork(_) => "no-network",
            TailscaleError::Timeout(_) => "timeout",
            TailscaleError::NoAuthKey => "no-auth-key",
            TailscaleError::ClonedDisk(_) => "cloned-disk",
            TailscaleError::Other(_) => "other",
        }
    }
}

/// Classifies a failed `tailscale up` from its stderr (the CLI has no
/// structured errors; these are the phrases its control client prints).
pub fn classify(stderr: &str, timed_out: bool) -> TailscaleError {
    let msg = stderr
        .trim()
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string();
    let s = stderr.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| s.contains(n));
    if has(&[
        "requested tags",
        "tags are invalid",
        "not permitted",
        "tag not permitted",
    ]) {
        TailscaleError::TagNotPermitted(msg)
    } else if has(&[
        "invalid key",
        "key expired",
        "expired",
        "api key does not exist",
        "unable to validate api key",
        "authkey",
        "auth key",
    ]) {
        TailscaleError::KeyExpired(msg)
    } else if has(&[
        "network is unreachable",
        "no route to host",
        "no such host",
        "dial tcp",
        "connection refused",
        "temporary failure in name resolution",
        "unexpected eof",
        "tls handshake",
    ]) {
        TailscaleError::NoNetwork(msg)
    } else if timed_out || has(&["timeout", "deadline exceeded", "timed out"]) {
        TailscaleError::Timeout(if msg.is_empty() {
            "tailscale up did not finish in time".into()
        } else {
            msg
        })
    } else {
        TailscaleError::Other(if msg.is_empty() {
            "tailscale up failed without a message".into()
        } else {
            msg
        })
    }
}

/// The parts of `tailscale status --json` the agent reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TsStatus {
    #[serde(rename = "BackendState", default)]
    pub backend_state: String,
    #[serde(rename = "TailscaleIPs", default)]
    pub tailscale_ips: Option<Vec<String>>,
    #[serde(rename = "Self", default)]
    pub self_node: Option<TsPeer>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TsPeer {
    #[serde(rename = "TailscaleIPs", default)]
    pub tailscale_ips: Option<Vec<String>>,
}

/// What the agent should do given the backend state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TsState {
    /// Running with an address: nothing to do.
    Joined(String),
    /// Needs `tailscale up` with a key.
    LoggedOut,
    /// Transient: check again shortly.
    Starting,
    /// Logged in but an admin must approve the device.
    NeedsApproval,
}

impl TsStatus {
    pub fn parse(json: &str) -> Result<TsStatus, TailscaleError> {
        serde_json::from_str(json).map_err(|e| {
            TailscaleError::Other(format!("unreadable `tailscale status --json`: {e}"))
        })
    }

    /// First Tailscale address, top-level list first (what the CLI prints),
    /// then the Self node's.
    pub fn ip(&self) -> Option<String> {
        let own = self
            .self_node
            .as_ref()
            .and_then(|s| s.tailscale_ips.as_ref());
        [self.tailscale_ips.as_ref(), own]
            .into_iter()
            .flatten()
            .flatten()
            .next()
            .cloned()
    }

    pub fn state(&self) -> TsState {
        match (self.backend_state.as_str(), self.ip()) {
            ("Running", Some(ip)) => TsState::Joined(ip),
            ("NeedsLogin" | "NoState" | "Stopped" | "", _) => TsState::LoggedOut,
            ("NeedsMachineAuth", _) => TsState::NeedsApproval,
            // "Starting", or "Running" before an address is assigned.
            _ => TsState::Starting,
        }
    }
}

/// Runs `tailscale status --json`. The CLI exits non-zero when logged out
/// on some versions while still printing JSON, so parse stdout first.
pub fn status(runner: &dyn CommandRunner, bin: &str) -> Result<TsStatus, TailscaleError> {
    let cmd = Cmd::new(bin)
        .args(["status", "--json"])
        .timeout(std::time::Duration::from_secs(20));
    let out = runner.output(&cmd).map_err(|e| match e {
        SpawnError::NotFound(p) => TailscaleError::Other(format!("`{p}` is not installed")),
        other => TailscaleError::Other(other.to_string()),
    })?;
    if out.stdout.trim_start().starts_with('{') {
        return TsStatus::parse(&out.stdout);
    }
    Err(TailscaleError::Other(format!(
        "`{cmd}` failed: {}",
        out.stderr.trim()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_real_cli_messages() {
        let cases = [
            ("backend error: invalid key: API key does not exist", TailscaleError::KeyExpired(String::new())),
            ("backend error: invalid key: auth key expired", TailscaleError::KeyExpired(String::new())),
            ("backend error: requested tags [tag:nope] are invalid or not permitted", TailscaleError::TagNotPermitted(String::new())),
            ("Post \"https://controlplane.tailscale.com\": dial tcp: lookup controlplane.tailscale.com: no such host", TailscaleError::NoNetwork(String::new())),
            ("timeout waiting for Tailscale service to enter a Running state; context deadline exceeded", TailscaleError::Timeout(String::new())),
            ("something odd", TailscaleError::Other(String::new())),
        ];
        for (msg, want) in cases {
            let got = classify(msg, false);
            assert_eq!(got.reason(), want.reason(), "{msg}");
        }
        assert_eq!(classify("", true).reason(), "timeout");
    }

    #[test]
    fn reads_state_and_ips() {
        let s = TsStatus::parse(r#"{"BackendState":"Running","TailscaleIPs":["100.64.0.7","fd7a::7"],"Self":{"TailscaleIPs":["100.64.0.7"]}}"#).unwrap();
        assert_eq!(s.state(), TsState::Joined("100.64.0.7".into()));
        let s = TsStatus::parse(r#"{"BackendState":"Running","TailscaleIPs":null,"Self":{"TailscaleIPs":["100.64.0.9"]}}"#).unwrap();
        assert_eq!(s.ip().as_deref(), Some("100.64.0.9"));
        for st in ["NeedsLogin", "NoState", "Stopped"] {
            let s = TsStatus::parse(&format!(r#"{{"BackendState":"{st}","Self":null}}"#)).unwrap();
            assert_eq!(s.state(), TsState::LoggedOut, "{st}");
        }
        let s = TsStatus::parse(r#"{"BackendState":"NeedsMachineAuth"}"#).unwrap();
        assert_eq!(s.state(), TsState::NeedsApproval);
        let s = TsStatus::parse(r#"{"BackendState":"Running","TailscaleIPs":[]}"#).unwrap();
        assert_eq!(s.state(), TsState::Starting);
        let e = TsStatus::parse("not json").unwrap_err();
        assert_eq!(e.reason(), "other");
        assert!(
            e.to_string()
                .starts_with("unreadable `tailscale status --json`: "),
            "{e}"
        );
    }
}

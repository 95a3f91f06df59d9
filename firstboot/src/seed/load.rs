//! Finding the per-node seed: a `nodeforge.seed=` URL on the kernel command
//! line (netboot) or a file on the boot partition.

use std::path::Path;
use std::time::Duration;

use super::schema::{Seed, SEED_CMDLINE_PARAM};
use crate::config::BakedConfig;
use crate::fsutil::{read_optional, under};
use crate::redact::{redact, REDACTED};

/// Why no seed could be used; the agent branches on the kind (a bad seed
/// stops the retries, an unreachable one does not).
#[derive(Debug, thiserror::Error)]
pub enum SeedLoadError {
    /// Present but invalid: retrying cannot help until someone fixes it.
    #[error("bad seed: {0}")]
    Bad(String),
    /// The seed URL did not answer: worth retrying later.
    #[error("seed not fetched: {0}")]
    Unreachable(String),
}

/// Where the seed came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedSource {
    /// In-image absolute path on the boot partition.
    File(String),
    /// Netboot URL from the kernel command line.
    Url(String),
}

impl std::fmt::Display for SeedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SeedSource::File(p) => f.write_str(p),
            SeedSource::Url(u) => f.write_str(u),
        }
    }
}

/// The kernel command line's seed URL wins (netboot); otherwise the first
/// seed file found on the boot partition; otherwise no seed.
pub fn load_seed(
    root: &Path,
    cfg: &BakedConfig,
    sleep: &dyn Fn(Duration),
) -> Result<(Seed, Option<SeedSource>), SeedLoadError> {
    let cmdline = read_optional(&under(root, "/proc/cmdline"))
        .map_err(|e| SeedLoadError::Unreachable(format!("{e:#}")))?
        .unwrap_or_default();
    if let Some(url) = cmdline_param(&cmdline, SEED_CMDLINE_PARAM) {
        let mut last = String::new();
        for attempt in 0..5u32 {
            if attempt > 0 {
                sleep(Duration::from_secs(1 << attempt));
            }
            match crate::http::get(&url, Duration::from_secs(10)) {
                Ok(body) => {
                    let text = String::from_utf8(body)
                        .map_err(|_| SeedLoadError::Bad(format!("{url}: not UTF-8")))?;
                    let seed = parse_seed(&text, &url)?;
                    return Ok((seed, Some(SeedSource::Url(url))));
                }
                Err(e) => last = format!("{e:#}"),
            }
        }
        return Err(SeedLoadError::Unreachable(last));
    }
    for p in &cfg.seed_paths {
        let path = under(root, p);
        let text = read_optional(&path).map_err(|e| SeedLoadError::Bad(format!("{e:#}")))?;
        if let Some(text) = text {
            let seed = parse_seed(&text, p)?;
            return Ok((seed, Some(SeedSource::File(p.clone()))));
        }
    }
    Ok((Seed::default(), None))
}

/// Parses a seed; the error never quotes an auth key, even a misspelt
/// field's (`authkey = "..."`) or one without the usual prefix.
fn parse_seed(text: &str, origin: &str) -> Result<Seed, SeedLoadError> {
    Seed::from_toml(text).map_err(|e| {
        let mut msg = format!("{origin}: {e}");
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let k = k.to_ascii_lowercase();
            let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
            if (k.contains("auth") || k.contains("tskey")) && !k.contains("ssh") && !v.is_empty() {
                msg = msg.replace(v, REDACTED);
            }
        }
        SeedLoadError::Bad(redact(&msg, None))
    })
}

/// `name=value` from a kernel command line (the last one wins, as in the
/// kernel); double quotes around the value are dropped.
pub fn cmdline_param(cmdline: &str, name: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .map(|v| v.trim_matches('"').to_string())
        .rfind(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_errors_hide_unprefixed_keys() {
        let text = "hostname = 'n1'\nauth_key = \"k3y-v4lue\"\n";
        let Err(SeedLoadError::Bad(msg)) = parse_seed(text, "/boot/efi/s.toml") else {
            panic!("parsed");
        };
        assert!(
            msg.contains("auth_key") && !msg.contains("k3y-v4lue"),
            "{msg}"
        );
    }

    #[test]
    fn reads_cmdline_params() {
        let c =
            "BOOT_IMAGE=/vmlinuz root=/dev/nfs nodeforge.seed=http://10.0.0.1:8080/s/a.toml quiet";
        assert_eq!(
            cmdline_param(c, "nodeforge.seed").as_deref(),
            Some("http://10.0.0.1:8080/s/a.toml")
        );
        assert_eq!(
            cmdline_param("nodeforge.seedx=1 quiet", "nodeforge.seed"),
            None
        );
        assert_eq!(
            cmdline_param("nodeforge.seed=\"http://h/\"", "nodeforge.seed").as_deref(),
            Some("http://h/")
        );
    }
}

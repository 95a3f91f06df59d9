//! Reproducible by default: a build with neither SOURCE_DATE_EPOCH nor a
//! pinned snapshot takes its epoch from the Debian archive it builds from,
//! the `Date:` of the suite's Release file (InRelease, else Release). Two
//! builds from the same archive state then stamp the same time without any
//! variable set; a new point release moves the date, and the packages with
//! it.
//!
//! The date is remembered in the cache, so a build that cannot reach the
//! archive (offline, or the mirror down) still uses the last date it saw,
//! with a warning; with none remembered it builds with its own time and
//! says why. Only the date is taken from the file: mmdebstrap and apt
//! verify the archive's signature themselves, and a wrong date can change
//! file times, never content.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::reproducible::days_from_civil;
use crate::profile::Debian;

/// Where a build's epoch came from; the manifest and `nodeforge plan`
/// carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum EpochSource {
    /// $SOURCE_DATE_EPOCH.
    Environment,
    /// The pinned snapshot's timestamp.
    Snapshot { snapshot: String },
    /// The `Date:` of the suite's Release file; `remembered` when the
    /// archive could not be asked and the cache's last reading was used.
    Archive {
        release: String,
        date: String,
        remembered: bool,
    },
    /// Not looked up yet: `check` and the library's `Plan::load` do not
    /// go to the network; `plan` and `build` resolve it.
    Unresolved,
    /// No epoch could be had: file times are the build's own.
    BuildTime { reason: String },
}

impl std::fmt::Display for EpochSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EpochSource::Environment => f.write_str("SOURCE_DATE_EPOCH"),
            EpochSource::Snapshot { snapshot } => write!(f, "snapshot {snapshot}"),
            EpochSource::Archive {
                release,
                date,
                remembered,
            } => {
                let how = if *remembered {
                    ", remembered by the cache"
                } else {
                    ""
                };
                write!(f, "Date: {date} of {release}{how}")
            }
            EpochSource::Unresolved => {
                f.write_str("the archive's Release date, read at build time")
            }
            EpochSource::BuildTime { reason } => write!(f, "the build's time: {reason}"),
        }
    }
}

/// What the cache remembers of one Release file.
#[derive(Debug, Serialize, Deserialize)]
struct Remembered {
    release: String,
    date: String,
    epoch: i64,
}

/// The epoch of `debian`'s archive and where it came from. Never fails:
/// what goes wrong is the returned source's reason. `remember` (a build)
/// writes a fresh reading to `cache_dir` and warns on stderr when there
/// was none; `plan` shows the source in its `epoch` line instead.
pub fn resolve(
    debian: &Debian,
    cache_dir: &Path,
    offline: bool,
    remember: bool,
) -> (Option<i64>, EpochSource) {
    let urls = release_urls(debian);
    let memo = memo_path(cache_dir, &urls[0]);
    let fetched = if offline {
        Err(anyhow::anyhow!("the build is --offline"))
    } else {
        fetch_date(&urls)
    };
    let why = match fetched {
        Ok((release, date, epoch)) => {
            if remember {
                let entry = Remembered {
                    release: release.clone(),
                    date: date.clone(),
                    epoch,
                };
                let json = serde_json::to_vec_pretty(&entry).expect("plain data serializes");
                // A cache that cannot be written only loses the fallback.
                if let Err(e) = crate::fsutil::create_dir_all(memo.parent().expect("has a parent"))
                    .and_then(|()| crate::fsutil::atomic_write(&memo, &json))
                {
                    eprintln!(
                        "warning: remembering the archive's date in {}: {e:#}",
                        memo.display()
                    );
                }
            }
            let source = EpochSource::Archive {
                release,
                date,
                remembered: false,
            };
            return (Some(epoch), source);
        }
        Err(e) => format!("{e:#}"),
    };
    match std::fs::read(&memo)
        .ok()
        .and_then(|b| serde_json::from_slice::<Remembered>(&b).ok())
    {
        Some(r) => {
            if remember {
                eprintln!(
                    "warning: the archive's date could not be read ({why}); using the one this \
                     cache saw last ({}: {})",
                    r.release, r.date
                );
            }
            let source = EpochSource::Archive {
                release: r.release,
                date: r.date,
                remembered: true,
            };
            (Some(r.epoch), source)
        }
        None => {
            let reason = format!(
                "the archive's date could not be read ({why}) and this cache has none: files \
                 carry the build's time; set SOURCE_DATE_EPOCH or pin [debian] snapshot for a \
                 reproducible image"
            );
            if remember {
                eprintln!("warning: {reason}");
            }
            (None, EpochSource::BuildTime { reason })
        }
    }
}

/// The suite's InRelease, then its Release, under the mirror.
fn release_urls(debian: &Debian) -> [String; 2] {
    let base = format!(
        "{}/dists/{}",
        debian.mirror.trim_end_matches('/'),
        debian.suite
    );
    [format!("{base}/InRelease"), format!("{base}/Release")]
}

fn memo_path(cache_dir: &Path, release: &str) -> PathBuf {
    let key = crate::fsutil::sha256_bytes(release.as_bytes());
    cache_dir
        .join("archive-dates")
        .join(format!("{}.json", &key[..16]))
}

/// (the URL read, its `Date:` text, that date in seconds) from the first
/// of `urls` that answers.
fn fetch_date(urls: &[String]) -> Result<(String, String, i64)> {
    let mut errors = Vec::new();
    for url in urls {
        match read_url(url) {
            // A page that is no Release file (a proxy's or a captive
            // portal's) counts as no answer: the next URL is asked.
            Ok(text) => match release_date(&text).and_then(|d| Ok((rfc2822_epoch(&d)?, d))) {
                Ok((epoch, date)) => return Ok((redacted(url), date, epoch)),
                Err(e) => errors.push(format!("the Date: of {}: {e:#}", redacted(url))),
            },
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    bail!("{}", errors.join("; "))
}

/// `url` without the `user:password@` a mirror URL may carry: it goes
/// into the manifest and `plan`'s output.
fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((authority, path)) => {
                let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                format!("{scheme}://{host}/{path}")
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

fn read_url(url: &str) -> Result<String> {
    if let Some(path) = url.strip_prefix("file:") {
        // file:/p, file:///p and file://localhost/p all name /p.
        let path = path.trim_start_matches("//localhost");
        let path = format!("/{}", path.trim_start_matches('/'));
        return std::fs::read_to_string(&path).with_context(|| format!("reading {path}"));
    }
    let shown = redacted(url);
    let body = crate::apt::http_get(url).with_context(|| format!("GET {shown}"))?;
    String::from_utf8(body).with_context(|| format!("GET {shown}: not text"))
}

/// The `Date:` field of a Release file (clear-signed or not).
pub fn release_date(text: &str) -> Result<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("Date:"))
        .map(|d| d.trim().to_owned())
        .filter(|d| !d.is_empty())
        .context("it has no Date: field")
}

/// Seconds since 1970 of a Release file's date, RFC 2822 as the archive
/// writes it (`Sat, 21 Nov 2026 09:15:44 UTC`; the zone UTC, GMT, Z or a
/// numeric offset).
pub fn rfc2822_epoch(date: &str) -> Result<i64> {
    let bad = || format!("`{date}` is not a date like `Sat, 21 Nov 2026 09:15:44 UTC`");
    let rest = match date.split_once(',') {
        Some((_weekday, rest)) => rest,
        None => date,
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let [day, month, year, time, zone] = f[..] else {
        bail!(bad());
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(month))
        .with_context(bad)? as i64
        + 1;
    let day: i64 = day
        .parse()
        .ok()
        .filter(|d| (1..=31).contains(d))
        .with_context(bad)?;
    let year: i64 = year
        .parse()
        .ok()
        .filter(|y| (1900..=9999).contains(y))
        .with_context(bad)?;
    let hms: Vec<i64> = time
        .split(':')
        .map(|n| n.parse::<i64>())
        .collect::<Result<_, _>>()
        .ok()
        .with_context(bad)?;
    let [h, m, s] = hms[..] else {
        bail!(bad());
    };
    if h > 23 || m > 59 || s > 60 {
        bail!(bad());
    }
    let offset = match zone {
        "UTC" | "GMT" | "Z" | "UT" => 0,
        z if z.len() == 5 && (z.starts_with('+') || z.starts_with('-')) => {
            let n: i64 = z[1..].parse().ok().with_context(bad)?;
            let secs = (n / 100) * 3600 + (n % 100) * 60;
            if z.starts_with('-') {
                -secs
            } else {
                secs
            }
        }
        _ => bail!(bad()),
    };
    Ok(days_from_civil(year, month, day) * 86400 + h * 3600 + m * 60 + s - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IN_RELEASE: &str = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n\
        Origin: Debian\nSuite: stable\nCodename: trixie\n\
        Date: Sat, 21 Nov 2026 09:15:44 UTC\nAcquire-By-Hash: yes\n";

    #[test]
    fn the_date_of_a_clear_signed_release_file() {
        let date = release_date(IN_RELEASE).unwrap();
        assert_eq!(date, "Sat, 21 Nov 2026 09:15:44 UTC");
        // date -u -d 'Sat, 21 Nov 2026 09:15:44 UTC' +%s
        assert_eq!(rfc2822_epoch(&date).unwrap(), 1_795_252_544);
    }

    #[test]
    fn credentials_in_a_mirror_url_are_not_shown() {
        assert_eq!(
            redacted("https://user:secret@mirror.example/debian/dists/trixie/InRelease"),
            "https://mirror.example/debian/dists/trixie/InRelease"
        );
        assert_eq!(
            redacted("http://deb.debian.org/debian/dists/trixie/InRelease"),
            "http://deb.debian.org/debian/dists/trixie/InRelease"
        );
    }

    #[test]
    fn zones_and_offsets() {
        let utc = rfc2822_epoch("Thu, 01 Jan 1970 00:00:00 UTC").unwrap();
        assert_eq!(utc, 0);
        assert_eq!(rfc2822_epoch("Thu, 01 Jan 1970 01:30:00 +0130").unwrap(), 0);
        assert_eq!(rfc2822_epoch("Wed, 31 Dec 1969 23:00:00 -0100").unwrap(), 0);
        assert_eq!(rfc2822_epoch("1 Jan 1970 00:00:10 GMT").unwrap(), 10);
    }

    #[test]
    fn malformed_dates_are_named() {
        for bad in [
            "",
            "Sat, 21 Foo 2026 09:15:44 UTC",
            "Sat, 32 Nov 2026 09:15:44 UTC",
            "Sat, 21 Nov 2026 25:15:44 UTC",
            "Sat, 21 Nov 2026 09:15 UTC",
            "Sat, 21 Nov 2026 09:15:44 CEST",
            "Sat, 21 Nov 2026 09:15:44",
        ] {
            let e = rfc2822_epoch(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{bad}: {e}");
        }
        let e = release_date("Origin: Debian\n").unwrap_err().to_string();
        assert!(e.contains("no Date:"), "{e}");
    }

    #[test]
    fn a_file_mirror_is_read_and_remembered_and_a_dead_one_falls_back_to_the_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = dir.path().join("mirror");
        std::fs::create_dir_all(mirror.join("dists/trixie")).unwrap();
        std::fs::write(mirror.join("dists/trixie/Release"), IN_RELEASE).unwrap();
        // A proxy's page where InRelease should be: Release is asked next.
        std::fs::write(mirror.join("dists/trixie/InRelease"), "<html>log in</html>").unwrap();
        let debian = Debian {
            suite: "trixie".into(),
            mirror: format!("file://{}/", mirror.display()),
            snapshot: None,
            components: vec!["main".into()],
        };
        let cache = dir.path().join("cache");
        let (epoch, source) = resolve(&debian, &cache, false, true);
        assert_eq!(epoch, Some(1_795_252_544));
        let release = format!("file://{}/dists/trixie/Release", mirror.display());
        assert_eq!(
            source,
            EpochSource::Archive {
                release: release.clone(),
                date: "Sat, 21 Nov 2026 09:15:44 UTC".into(),
                remembered: false
            }
        );
        // Offline: the remembered reading.
        let (epoch, source) = resolve(&debian, &cache, true, false);
        assert_eq!(epoch, Some(1_795_252_544));
        assert!(matches!(
            source,
            EpochSource::Archive {
                remembered: true,
                ..
            }
        ));
        // The mirror gone and nothing remembered: the build's time, and why.
        std::fs::remove_dir_all(&mirror).unwrap();
        let (epoch, source) = resolve(&debian, &dir.path().join("empty"), false, true);
        assert_eq!(epoch, None);
        let EpochSource::BuildTime { reason } = source else {
            panic!("{source:?}")
        };
        assert!(reason.contains("dists/trixie/InRelease"), "{reason}");
        assert!(reason.contains("SOURCE_DATE_EPOCH"), "{reason}");
    }
}

//! Remove the auth key from every place it was, overwriting before
//! unlinking, then check that no key string is left on disk or in the
//! journal. Runs after the join, so the key is no longer needed.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{Ctx, Outcome};
use crate::fsutil::{read_optional, rewrite_in_place, shred_and_remove, under};
use crate::runner::{Cmd, SpawnError};
use crate::seed::load::SeedSource;
use crate::seed::{Seed, TSKEY_PREFIX};

/// Where a stray key would matter: config, the boot partition, our state.
pub const SCAN_DIRS: &[&str] = &["/etc", "/boot", "/var/lib/nodeforge"];
/// Kernels and initrds are built before any seed exists; reading them
/// would cost more CPU than the rest of the agent together.
const SCAN_MAX_FILE: u64 = 8 << 20;
const JOURNAL_DIRS: &[&str] = &["/var/log/journal", "/run/log/journal"];

pub fn scrub_secrets(ctx: &mut Ctx<'_>) -> Result<Outcome> {
    let mut removed = Vec::new();
    if shred_and_remove(&under(ctx.root, super::AUTHKEY_RUN_PATH))? {
        removed.push(super::AUTHKEY_RUN_PATH.to_string());
    }
    for p in &ctx.cfg.seed_paths {
        if scrub_seed_file(&under(ctx.root, p))? {
            removed.push(p.clone());
        }
    }

    // A node that joins no tailnet and whose seed brought no key and no
    // stack secret has nothing to scrub; the scan (journalctl above all)
    // would be most of its first boot's agent time.
    if removed.is_empty()
        && ctx.cfg.tailscale.is_none()
        && ctx.seed.tailscale_auth_key.is_none()
        && ctx.seed.stack_secrets.is_empty()
    {
        let msg = "no secret reached this node: it joins no tailnet and its seed held no auth key or stack secret".to_string();
        ctx.notes.secrets = Some(msg.clone());
        return Ok(Outcome::Skipped(msg));
    }
    let (leftovers, big) = scan_tree(ctx.root)?;
    let journal = scan_journal(ctx)?;
    let mut found: Vec<String> = leftovers;
    if let Some(j) = journal {
        found.push(j);
    }
    let place = if removed.is_empty() {
        "no copy of the auth key was on this node".to_string()
    } else {
        format!("auth key removed from {}", removed.join(", "))
    };
    let remote = match ctx.seed_source {
        Some(SeedSource::Url(u)) => format!("; the seed server still holds {u}"),
        Some(SeedSource::File(_)) | None => String::new(),
    };
    if !found.is_empty() {
        let msg = format!(
            "{place}; but an auth key string remains in: {}",
            found.join(", ")
        );
        ctx.notes.secrets = Some(msg.clone());
        anyhow::bail!(msg);
    }
    let skipped = if big > 0 {
        format!(" ({big} file(s) over 8 MiB not read)")
    } else {
        String::new()
    };
    let msg = format!(
        "{place}; none left under {} or in the journal{skipped}{remote}",
        SCAN_DIRS.join(", ")
    );
    ctx.notes.secrets = Some(msg.clone());
    Ok(Outcome::Done(msg))
}

/// Rewrites a seed without its key, in place (see `rewrite_in_place`).
/// Returns whether there was a key to remove.
fn scrub_seed_file(path: &Path) -> Result<bool> {
    let Some(text) = read_optional(path)? else {
        return Ok(false);
    };
    let has_key = Seed::from_toml(&text)
        .map(|s| s.has_secrets())
        .unwrap_or(false);
    let mut clean = match Seed::from_toml(&text) {
        Ok(seed) if has_key => seed.without_secrets().to_toml(),
        _ => text.clone(),
    };
    // Also catch a key in a comment or in a seed that no longer parses.
    if clean.contains(TSKEY_PREFIX) {
        clean = clean
            .lines()
            .filter(|l| !l.contains(TSKEY_PREFIX))
            .map(|l| format!("{l}\n"))
            .collect();
    }
    if clean == text {
        return Ok(false);
    }
    rewrite_in_place(path, clean.as_bytes())
        .with_context(|| format!("scrubbing the seed {}", path.display()))?;
    Ok(true)
}

/// Files under SCAN_DIRS holding the key prefix, and how many were too
/// big to read.
fn scan_tree(root: &Path) -> Result<(Vec<String>, usize)> {
    let mut found = Vec::new();
    let mut big = 0;
    let mut stack: Vec<PathBuf> = SCAN_DIRS.iter().map(|d| under(root, d)).collect();
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            // Unreadable directories (permissions) are not fatal for a scan.
            if let Ok(rd) = fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if meta.is_file() {
            if meta.len() > SCAN_MAX_FILE {
                big += 1;
            } else if file_contains(&p, TSKEY_PREFIX.as_bytes(), SCAN_MAX_FILE)? {
                let rel = p.strip_prefix(root).unwrap_or(&p);
                found.push(format!("/{}", rel.display()));
            }
        }
    }
    found.sort();
    Ok((found, big))
}

fn file_contains(path: &Path, needle: &[u8], max: u64) -> Result<bool> {
    let mut buf = Vec::new();
    match fs::File::open(path) {
        Ok(f) => f
            .take(max)
            .read_to_end(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?,
        // Sockets, FIFOs and root-only files are not where a seed goes.
        Err(_) => return Ok(false),
    };
    Ok(contains(&buf, needle))
}

/// Boyer–Moore–Horspool: skips up to `needle.len()` bytes per step, several
/// times faster than comparing every window on the MBs under /boot.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let n = needle.len();
    if n == 0 {
        return true;
    }
    if hay.len() < n {
        return false;
    }
    let mut skip = [n; 256];
    for (i, &b) in needle[..n - 1].iter().enumerate() {
        skip[b as usize] = n - 1 - i;
    }
    let mut i = 0;
    while i + n <= hay.len() {
        let last = hay[i + n - 1];
        if last == needle[n - 1] && &hay[i..i + n] == needle {
            return true;
        }
        i += skip[last as usize];
    }
    false
}

/// Asks journald first; falls back to reading journal files when
/// journalctl is missing or cannot read them. Returns a description of
/// where a key was found.
fn scan_journal(ctx: &Ctx<'_>) -> Result<Option<String>> {
    let mut cmd = Cmd::new("journalctl").args(["-q", "--no-pager", "-o", "cat"]);
    if !ctx.live {
        cmd = cmd.arg(format!("--root={}", ctx.root.display()));
    }
    let cmd = cmd.arg(format!("--grep={TSKEY_PREFIX}"));
    match ctx.runner.output(&cmd) {
        // journalctl exits 1 when --grep matches nothing.
        Ok(out) if matches!(out.code, Some(0) | Some(1)) && out.stderr.trim().is_empty() => {
            let n = out.stdout.lines().filter(|l| !l.trim().is_empty()).count();
            return Ok((n > 0).then(|| format!("the journal ({n} message(s))")));
        }
        Ok(_) | Err(SpawnError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    for d in JOURNAL_DIRS {
        let mut stack = vec![under(ctx.root, d)];
        while let Some(p) = stack.pop() {
            if p.is_dir() {
                if let Ok(rd) = fs::read_dir(&p) {
                    stack.extend(rd.flatten().map(|e| e.path()));
                }
            } else if p.extension().is_some_and(|e| e == "journal")
                && file_contains(&p, TSKEY_PREFIX.as_bytes(), 1 << 30)?
            {
                let rel = p.strip_prefix(ctx.root).unwrap_or(&p);
                return Ok(Some(format!("journal file /{}", rel.display())));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::contains;

    #[test]
    fn finds_needles_anywhere() {
        let n = b"tskey-";
        assert!(contains(b"tskey-", n));
        assert!(contains(b"xx tskey-auth", n));
        assert!(contains(b"tskey tskey-", n));
        assert!(contains(b"ttttskey-", n));
        assert!(!contains(b"tskey_ tskey", n));
        assert!(!contains(b"", n));
        let mut big = vec![b'k'; 1 << 20];
        assert!(!contains(&big, n));
        big[777_777..777_783].copy_from_slice(n);
        assert!(contains(&big, n));
    }
}

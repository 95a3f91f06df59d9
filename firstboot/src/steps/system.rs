//! Steps that only touch files: hostname, SSH host keys, authorized keys.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey};

use super::{Ctx, Outcome};
use crate::fsutil::{atomic_write, read_optional, under};
use crate::seed::validate_hostname;

pub fn hostname(ctx: &mut Ctx<'_>) -> Result<Outcome> {
    let h = ctx.hostname().to_string();
    validate_hostname(&h)?;
    let mut changed = Vec::new();

    let etc_hostname = under(ctx.root, "/etc/hostname");
    let current = read_optional(&etc_hostname)?.unwrap_or_default();
    if current.trim() != h {
        atomic_write(&etc_hostname, format!("{h}\n").as_bytes(), 0o644)
            .with_context(|| format!("writing {}", etc_hostname.display()))?;
        changed.push("/etc/hostname");
    }

    // Debian maps the own name to 127.0.1.1 so it resolves without DNS.
    let etc_hosts = under(ctx.root, "/etc/hosts");
    let hosts = read_optional(&etc_hosts)?.unwrap_or_default();
    let want = format!("127.0.1.1\t{h}");
    let mut found = false;
    let mut lines: Vec<String> = hosts
        .lines()
        .map(|l| {
            if l.split_whitespace().next() == Some("127.0.1.1") {
                found = true;
                want.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        if lines.is_empty() {
            lines.push("127.0.0.1\tlocalhost".into());
        }
        lines.push(want);
    }
    let new_hosts = lines.join("\n") + "\n";
    if new_hosts != hosts {
        atomic_write(&etc_hosts, new_hosts.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", etc_hosts.display()))?;
        changed.push("/etc/hosts");
    }

    if ctx.live
        && read_optional(Path::new("/proc/sys/kernel/hostname"))?
            .as_deref()
            .map(str::trim)
            != Some(h.as_str())
    {
        // SAFETY: pointer and length describe a live byte slice.
        let rc = unsafe { libc::sethostname(h.as_ptr().cast(), h.len()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("setting the kernel hostname to {h}"));
        }
        changed.push("kernel");
    }

    Ok(if changed.is_empty() {
        Outcome::Skipped(format!("hostname already {h}"))
    } else {
        Outcome::Done(format!("set to {h} ({})", changed.join(", ")))
    })
}

pub const HOST_KEY_PATH: &str = "/etc/ssh/ssh_host_ed25519_key";

pub fn ssh_host_keys(ctx: &mut Ctx<'_>) -> Result<Outcome> {
    let ssh_dir = under(ctx.root, "/etc/ssh");
    if !ssh_dir.is_dir() {
        return Ok(Outcome::Skipped(
            "no /etc/ssh: sshd is not in this image".into(),
        ));
    }
    let key_path = under(ctx.root, HOST_KEY_PATH);
    let pub_path = under(ctx.root, &format!("{HOST_KEY_PATH}.pub"));
    let (key, generated) = match read_optional(&key_path)? {
        Some(text) => (existing_host_key(ctx, &key_path, text)?, false),
        None => {
            let mut key = PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519)
                .context("generating an ed25519 host key")?;
            key.set_comment(format!("root@{}", ctx.hostname()));
            let pem = key
                .to_openssh(LineEnding::LF)
                .context("encoding the host key")?;
            // Private key first: if we stop before the .pub is written, the
            // next run derives it from this key instead of making a new one.
            atomic_write(&key_path, pem.as_bytes(), 0o600)
                .with_context(|| format!("writing host key {}", key_path.display()))?;
            (key, true)
        }
    };
    let public = key
        .public_key()
        .to_openssh()
        .context("encoding the public host key")?;
    let have_pub = read_optional(&pub_path)?;
    let pub_ok = have_pub
        .as_deref()
        .is_some_and(|p| same_key(p.trim(), &public));
    if !pub_ok {
        atomic_write(&pub_path, format!("{public}\n").as_bytes(), 0o644)
            .with_context(|| format!("writing {}", pub_path.display()))?;
    }
    let fp = key.public_key().fingerprint(HashAlg::Sha256);
    Ok(match (generated, pub_ok) {
        (true, _) => Outcome::Done(format!("generated ed25519 host key {fp}")),
        (false, false) => Outcome::Done(format!("kept ed25519 host key {fp}, rewrote its .pub")),
        (false, true) => Outcome::Skipped(format!("ed25519 host key already present ({fp})")),
    })
}

/// The host key already there. sshd's first start makes one too; a key
/// that does not parse yet is read again for a few seconds (one written
/// in place by an older image's keygen) before it is an error.
fn existing_host_key(
    ctx: &Ctx<'_>,
    path: &std::path::Path,
    mut text: String,
) -> Result<PrivateKey> {
    let mut tries = 0;
    loop {
        match PrivateKey::from_openssh(&text) {
            Ok(k) => return Ok(k),
            Err(_) if tries < 10 => {
                tries += 1;
                (ctx.sleep)(std::time::Duration::from_millis(500));
                text = read_optional(path)?.unwrap_or_default();
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("parsing existing host key {}", path.display()))
            }
        }
    }
}

/// Two OpenSSH public key lines name the same key when type and data match
/// (comments may differ).
fn same_key(a: &str, b: &str) -> bool {
    fn fields(s: &str) -> Vec<&str> {
        s.split_whitespace().take(2).collect()
    }
    let (fa, fb) = (fields(a), fields(b));
    fa.len() == 2 && fa == fb
}

pub(crate) struct PasswdEntry {
    uid: u32,
    gid: u32,
    pub(crate) home: String,
}

/// `user`'s entry in `root`'s /etc/passwd.
pub(crate) fn lookup_user(root: &Path, user: &str) -> Result<PasswdEntry> {
    let path = under(root, "/etc/passwd");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 7 && f[0] == user {
            let num = |s: &str| {
                s.parse::<u32>()
                    .with_context(|| format!("{}: bad id {s:?} for {user}", path.display()))
            };
            return Ok(PasswdEntry {
                uid: num(f[2])?,
                gid: num(f[3])?,
                home: f[5].to_string(),
            });
        }
    }
    bail!("admin user {user:?} is not in {}", path.display())
}

pub fn authorized_keys(ctx: &mut Ctx<'_>) -> Result<Outcome> {
    let keys = &ctx.seed.ssh_authorized_keys;
    if keys.is_empty() {
        return Ok(Outcome::Skipped("the seed carries no SSH keys".into()));
    }
    let Some(user) = ctx.cfg.admin_user.as_deref() else {
        return Ok(Outcome::Skipped(format!(
            "the seed carries {} SSH key(s) but the image has no admin_user",
            keys.len()
        )));
    };
    let pw = lookup_user(ctx.root, user)?;
    let ssh_dir = under(ctx.root, &format!("{}/.ssh", pw.home));
    let path = ssh_dir.join("authorized_keys");
    let existing = read_optional(&path)?.unwrap_or_default();
    let mut text = existing.clone();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let mut added = 0;
    for k in keys {
        let k = k.trim();
        if !text.lines().any(|l| same_key(l, k)) {
            text.push_str(k);
            text.push('\n');
            added += 1;
        }
    }
    if added == 0 {
        return Ok(Outcome::Skipped(format!(
            "all {} seed key(s) already authorized for {user}",
            keys.len()
        )));
    }
    fs::create_dir_all(&ssh_dir).with_context(|| format!("creating {}", ssh_dir.display()))?;
    fs::set_permissions(&ssh_dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting mode of {}", ssh_dir.display()))?;
    atomic_write(&path, text.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    if ctx.live {
        // sshd's StrictModes refuses keys in files the user does not own.
        for p in [&ssh_dir, &path] {
            std::os::unix::fs::chown(p, Some(pw.uid), Some(pw.gid))
                .with_context(|| format!("chown {}:{} {}", pw.uid, pw.gid, p.display()))?;
        }
    }
    Ok(Outcome::Done(format!(
        "added {added} key(s) to {}/.ssh/authorized_keys",
        pw.home
    )))
}

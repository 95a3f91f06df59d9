//! Checks on single values of a profile, and the file context that turns
//! a failed check into an error at the right line.

use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use toml::Spanned;

use super::error::ProfileError;
use super::file::{Arch, Firmware, HardwareFile, InitramfsKind, StackFile, UserFile};
use super::{Disk, Probe, ProbeCheck, Stack, User};
use crate::oci::Reference;

/// Default bound on waiting for a stack's services to become healthy.
const DEFAULT_HEALTH_TIMEOUT: u64 = 180;

/// A file being read: its path and text, to locate errors in it.
#[derive(Debug, Clone)]
pub struct FileCtx {
    pub path: PathBuf,
    pub source: String,
}

impl FileCtx {
    pub fn read(path: &Path) -> Result<Self, ProfileError> {
        let source = fs::read_to_string(path)
            .map_err(|e| ProfileError::whole_file(path, format!("cannot read: {e}")))?;
        Ok(FileCtx {
            path: path.to_owned(),
            source,
        })
    }

    pub fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }

    pub fn error_at<T>(&self, value: &Spanned<T>, msg: impl Into<String>) -> ProfileError {
        ProfileError::at(&self.path, &self.source, Some(value.span()), msg)
    }

    /// Where a named thing (`hardware/NAME.toml`, `overlays/NAME/`) is
    /// looked for: beside the profiles folder (the project root), then
    /// beside this file. A value with a `/` is a path relative to this file.
    fn candidates(&self, kind: &str, value: &str, suffix: &str) -> Vec<PathBuf> {
        if value.contains('/') {
            return vec![self.dir().join(value)];
        }
        self.below(kind, &format!("{value}{suffix}"))
    }

    /// `rel` below the folder `kind` beside the profiles folder (the
    /// project root), then below the one beside this file.
    fn below(&self, kind: &str, rel: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Some(root) = self.dir().parent() {
            out.push(root.join(kind).join(rel));
        }
        out.push(self.dir().join(kind).join(rel));
        out
    }

    /// A stack's compose template: a path below `stacks/` (beside the
    /// profiles folder, then beside this file).
    pub fn find_compose(&self, value: &Spanned<String>) -> Result<PathBuf, ProfileError> {
        let v = value.get_ref();
        if v.starts_with('/') || v.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(self.error_at(
                value,
                format!("compose `{v}` must be a relative path below stacks/, e.g. `web/compose.yaml.tera`"),
            ));
        }
        self.first_found(
            value,
            "compose file",
            self.below("stacks", v),
            Path::is_file,
        )
    }

    pub fn find_file(&self, kind: &str, value: &Spanned<String>) -> Result<PathBuf, ProfileError> {
        self.find(kind, value, ".toml", Path::is_file)
    }

    pub fn find_dir(&self, kind: &str, value: &Spanned<String>) -> Result<PathBuf, ProfileError> {
        self.find(kind, value, "", Path::is_dir)
    }

    fn find(
        &self,
        kind: &str,
        value: &Spanned<String>,
        suffix: &str,
        exists: fn(&Path) -> bool,
    ) -> Result<PathBuf, ProfileError> {
        let candidates = self.candidates(kind, value.get_ref(), suffix);
        self.first_found(value, kind.trim_end_matches('s'), candidates, exists)
    }

    /// The first of `candidates` that `exists`, or an error at `value`
    /// that lists every place looked in.
    fn first_found(
        &self,
        value: &Spanned<String>,
        what: &str,
        candidates: Vec<PathBuf>,
        exists: fn(&Path) -> bool,
    ) -> Result<PathBuf, ProfileError> {
        if let Some(found) = candidates.iter().find(|p| exists(p)) {
            return Ok(found.clone());
        }
        let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        Err(self.error_at(
            value,
            format!(
                "{what} `{}` not found (looked for {})",
                value.get_ref(),
                looked.join(", ")
            ),
        ))
    }

    /// `value` when `check` accepts it; otherwise `None`, and the check's
    /// message, at the value's line, joins `errors`.
    pub fn checked(
        &self,
        value: &Spanned<String>,
        check: fn(&str) -> Result<(), Invalid>,
        errors: &mut Vec<ProfileError>,
    ) -> Option<String> {
        match check(value.get_ref()) {
            Ok(()) => Some(value.get_ref().clone()),
            Err(why) => {
                errors.push(self.error_at(value, why));
                None
            }
        }
    }
}

/// Why a single value fails its check, in words that say what a good one
/// looks like. It has no location: the caller places it at the value's
/// line ([`FileCtx::error_at`], [`FileCtx::checked`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<Invalid> for String {
    fn from(why: Invalid) -> String {
        why.0
    }
}

/// For the tests of the checks: asserts that `check` accepts each of
/// `values`.
#[cfg(test)]
pub(super) fn accepts(check: fn(&str) -> Result<(), Invalid>, values: &[&str]) {
    for v in values {
        if let Err(e) = check(v) {
            panic!("`{v}` is refused: {e}");
        }
    }
}

/// For the tests of the checks: the message of a check that must fail.
#[cfg(test)]
pub(super) fn why(r: Result<(), Invalid>) -> String {
    r.expect_err("the check accepts it").0
}

/// RFC 1123 host name: labels of letters, digits and hyphens.
pub fn hostname(h: &str) -> Result<(), Invalid> {
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if h.len() <= 253 && h.split('.').all(ok_label) {
        Ok(())
    } else {
        Err(Invalid(format!(
            "hostname `{h}` is not valid: use letters, digits and hyphens (no leading or trailing hyphen, at most 63 per label)"
        )))
    }
}

pub fn mirror(m: &str) -> Result<(), Invalid> {
    if m.starts_with("http://") || m.starts_with("https://") || m.starts_with("file:/") {
        Ok(())
    } else {
        Err(Invalid(format!(
            "mirror `{m}` must be an http://, https:// or file:/ URL"
        )))
    }
}

pub fn component(c: &str) -> Result<(), Invalid> {
    match c {
        "main" | "contrib" | "non-free" | "non-free-firmware" => Ok(()),
        _ => Err(Invalid(format!(
            "unknown Debian component `{c}`: use main, contrib, non-free or non-free-firmware"
        ))),
    }
}

/// Debian package names (policy 5.6.1), optionally with `=version` or
/// `:arch`, as mmdebstrap's --include takes them.
pub fn package_name(p: &str) -> Result<(), Invalid> {
    let name = p.split(['=', ':']).next().unwrap_or("");
    let valid = name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if valid {
        Ok(())
    } else {
        Err(Invalid(format!("`{p}` is not a Debian package name")))
    }
}

pub fn tailscale_tag(t: &str) -> Result<(), Invalid> {
    let rest = t.strip_prefix("tag:").unwrap_or("");
    if !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        Ok(())
    } else {
        Err(Invalid(format!(
            "tailscale tag `{t}` must look like `tag:name` (letters, digits, hyphens)"
        )))
    }
}

fn user_name(n: &str) -> Result<(), Invalid> {
    let valid = !n.is_empty()
        && n.len() <= 32
        && n.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if n == "root" {
        return Err(Invalid(
            "user `root` cannot be declared: add keys to an ordinary user with `sudo = true`"
                .into(),
        ));
    }
    if valid {
        Ok(())
    } else {
        Err(Invalid(format!("user name `{n}` is not valid: lowercase letters, digits, `_` and `-`, starting with a letter")))
    }
}

/// Validates a user entry; every bad key is reported, each at its line.
pub fn user(ctx: &FileCtx, u: &UserFile) -> Result<User, Vec<ProfileError>> {
    let mut errors = Vec::new();
    if let Err(msg) = user_name(u.name.get_ref()) {
        errors.push(ctx.error_at(&u.name, msg));
    }
    let mut keys = Vec::new();
    for (i, k) in u.authorized_keys.iter().enumerate() {
        match ssh_key::PublicKey::from_str(k.get_ref().trim()) {
            Ok(key) => keys.push(key.to_openssh().unwrap_or_else(|_| k.get_ref().trim().to_owned())),
            Err(e) => errors.push(ctx.error_at(
                k,
                format!(
                    "authorized key #{} of user `{}` is not an OpenSSH public key ({e}): paste the whole line from the .pub file",
                    i + 1,
                    u.name.get_ref()
                ),
            )),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut groups = u.groups.clone();
    if u.sudo && !groups.iter().any(|g| g == "sudo") {
        groups.push("sudo".into());
    }
    Ok(User {
        name: u.name.get_ref().clone(),
        groups,
        shell: u.shell.clone().unwrap_or_else(|| "/bin/bash".into()),
        sudo: u.sudo,
        authorized_keys: keys,
    })
}

/// A hardware file's parts that only make sense together.
pub fn hardware(h: &HardwareFile) -> Result<(), Invalid> {
    match (h.firmware, &h.rpi) {
        (Firmware::Rpi, None) => {
            return Err(Invalid(
                "firmware = \"rpi\" needs an [rpi] table with device_trees (and the firmware_files the board loads)"
                    .into(),
            ))
        }
        (Firmware::Rpi, Some(rpi)) => {
            if h.arch != Arch::Arm64 {
                return Err(Invalid("firmware = \"rpi\" boots 64-bit kernels only: set arch = \"arm64\"".into()));
            }
            if rpi.device_trees.is_empty() {
                return Err(Invalid("[rpi] device_trees is empty: list the board's .dtb files (e.g. bcm2711-rpi-4-b.dtb)".into()));
            }
            for f in rpi.firmware_files.iter().chain(&rpi.device_trees) {
                if f.is_empty() || f.contains('/') || f.starts_with('.') {
                    return Err(Invalid(format!("[rpi] file `{f}` must be a plain file name")));
                }
            }
            if rpi.config.iter().any(|l| l.contains('\n')) {
                return Err(Invalid("[rpi] config entries are single config.txt lines".into()));
            }
        }
        (Firmware::Uefi, Some(_)) => {
            return Err(Invalid("an [rpi] table needs firmware = \"rpi\"".into()))
        }
        (Firmware::Uefi, None) => {}
    }
    match h.initramfs {
        InitramfsKind::Nodeforge if h.initramfs_modules.is_empty() => Err(Invalid(
            "initramfs = \"nodeforge\" needs initramfs_modules: the drivers that reach the root filesystem (e.g. virtio_blk, ext4)"
                .into(),
        )),
        InitramfsKind::InitramfsTools if !h.initramfs_modules.is_empty() => Err(Invalid(
            "initramfs_modules is only used with initramfs = \"nodeforge\"".into(),
        )),
        _ => Ok(()),
    }
}

/// Compose project names: lowercase letters, digits, `-` and `_`.
fn stack_name(n: &str) -> Result<(), Invalid> {
    let ok = !n.is_empty()
        && n.len() <= 63
        && n.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Invalid(format!("stack name `{n}` is not valid: lowercase letters, digits, `-` and `_`, starting with a letter or digit")))
    }
}

fn env_name(n: &str) -> bool {
    !n.is_empty()
        && n.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn probe_http(u: &str) -> Result<(), Invalid> {
    let rest = u.strip_prefix("http://").unwrap_or("");
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(Invalid(format!(
            "http probe `{u}` must be an http:// URL, e.g. http://127.0.0.1:8080/"
        )));
    }
    Ok(())
}

fn probe_tcp(a: &str) -> Result<(), Invalid> {
    match a.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => Err(Invalid(format!(
            "tcp probe `{a}` must be `host:port`, e.g. 127.0.0.1:5432"
        ))),
    }
}

/// Validates a stack entry; every bad key is reported at its line.
pub fn stack(ctx: &FileCtx, s: &StackFile) -> Result<Stack, Vec<ProfileError>> {
    let mut errors = Vec::new();
    if let Err(msg) = stack_name(s.name.get_ref()) {
        errors.push(ctx.error_at(&s.name, msg));
    }
    let compose = ctx
        .find_compose(&s.compose)
        .map_err(|e| errors.push(e))
        .ok();
    let mut env = std::collections::BTreeMap::new();
    for (k, v) in &s.env {
        if !env_name(k) {
            errors.push(ctx.error_at(
                v,
                format!("environment name `{k}` is not valid: letters, digits and `_`"),
            ));
        } else if v.get_ref().contains(['\n', '\'']) {
            errors.push(ctx.error_at(
                v,
                format!("environment value of `{k}` must be one line without `'` (it is written single-quoted to the stack's .env)"),
            ));
        } else {
            env.insert(k.clone(), v.get_ref().clone());
        }
    }
    let mut secrets: Vec<String> = Vec::new();
    for n in &s.secrets {
        let name = n.get_ref();
        let msg = if !env_name(name) {
            format!("secret name `{name}` is not valid: letters, digits and `_`")
        } else if secrets.contains(name) {
            format!("secret `{name}` is listed twice")
        } else if env.contains_key(name) {
            format!("`{name}` is both a secret and an env value: a secret's value never goes in the profile")
        } else {
            secrets.push(name.clone());
            continue;
        };
        errors.push(ctx.error_at(n, msg));
    }
    let mut images: Vec<String> = Vec::new();
    for i in &s.images {
        match Reference::parse(i.get_ref()) {
            Ok(_) if images.contains(i.get_ref()) => {
                errors.push(ctx.error_at(i, format!("image `{}` is listed twice", i.get_ref())))
            }
            Ok(_) => images.push(i.get_ref().clone()),
            Err(e) => errors.push(ctx.error_at(i, e.to_string())),
        }
    }
    let mut probes = Vec::new();
    for p in &s.probes {
        let check = match (&p.http, &p.tcp) {
            (Some(u), None) => probe_http(u.get_ref())
                .map(|_| ProbeCheck::Http(u.get_ref().clone()))
                .map_err(|m| ctx.error_at(u, m)),
            (None, Some(a)) => probe_tcp(a.get_ref())
                .map(|_| ProbeCheck::Tcp(a.get_ref().clone()))
                .map_err(|m| ctx.error_at(a, m)),
            _ => Err(ctx.error_at(
                &p.service,
                format!(
                    "probe of service `{}` needs exactly one of `http` and `tcp`",
                    p.service.get_ref()
                ),
            )),
        };
        let reason = match (&p.reason, &p.http) {
            (Some(r), Some(_)) => Err(ctx.error_at(
                r,
                format!(
                    "probe of service `{}`: `reason` explains a `tcp` probe; an `http` probe needs none",
                    p.service.get_ref()
                ),
            )),
            (Some(r), None) if r.get_ref().trim().is_empty() => Err(ctx.error_at(
                r,
                format!(
                    "probe of service `{}`: `reason` is empty; say why a TCP connect is the best check it has",
                    p.service.get_ref()
                ),
            )),
            (r, _) => Ok(r.as_ref().map(|r| r.get_ref().clone())),
        };
        match (check, reason) {
            (Ok(check), Ok(reason)) => probes.push(Probe {
                service: p.service.get_ref().clone(),
                check,
                reason,
            }),
            (Err(e), _) | (_, Err(e)) => errors.push(e),
        }
    }
    if s.health_timeout_secs == Some(0) {
        errors.push(ProfileError::at(
            &ctx.path,
            &ctx.source,
            Some(s.name.span()),
            format!(
                "stack `{}`: health_timeout_secs must be at least 1",
                s.name.get_ref()
            ),
        ));
    }
    match compose {
        Some(compose) if errors.is_empty() => Ok(Stack {
            name: s.name.get_ref().clone(),
            compose,
            env,
            secrets,
            images,
            probes,
            health_timeout_secs: s.health_timeout_secs.unwrap_or(DEFAULT_HEALTH_TIMEOUT),
        }),
        _ => Err(errors),
    }
}

/// The smallest root filesystem worth building.
const MIN_ROOT: u64 = 512 << 20;
/// UEFI firmware needs FAT32 for the ESP, which needs ~33 MiB at least.
const MIN_ESP: u64 = 64 << 20;

pub fn disk(d: &Disk) -> Result<(), Invalid> {
    if d.esp_size.0 < MIN_ESP {
        return Err(Invalid(format!(
            "esp_size {} is too small: at least 64MiB",
            d.esp_size
        )));
    }
    if d.size.0 < d.esp_size.0 + MIN_ROOT {
        return Err(Invalid(format!(
            "disk size {} leaves no room for a root filesystem after the {} ESP: make it at least {}",
            d.size,
            d.esp_size,
            super::ByteSize(d.esp_size.0 + MIN_ROOT + (2 << 20))
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        accepts(hostname, &["nx-core", "a.b.c"]);
        for bad in ["-bad", "under_score", ""] {
            assert!(
                why(hostname(bad)).contains(&format!("hostname `{bad}` is not valid")),
                "{bad}"
            );
        }
    }

    #[test]
    fn package_names() {
        accepts(package_name, &["openssh-server", "libc6:amd64", "g++"]);
        for bad in ["Bad", "a b"] {
            assert_eq!(
                why(package_name(bad)),
                format!("`{bad}` is not a Debian package name")
            );
        }
    }

    fn hw(text: &str) -> Result<(), Invalid> {
        hardware(&toml::from_str::<HardwareFile>(text).unwrap())
    }

    #[test]
    fn hardware_combinations() {
        let pi = "arch = \"arm64\"\nfirmware = \"rpi\"\ninitramfs = \"nodeforge\"\ninitramfs_modules = [\"ext4\"]\n[rpi]\ndevice_trees = [\"bcm2711-rpi-4-b.dtb\"]\n";
        assert_eq!(hw(pi), Ok(()));
        assert!(why(hw(&pi.replace("arm64", "amd64"))).contains("arch = \"arm64\""));
        let no_table = "arch = \"arm64\"\nfirmware = \"rpi\"\n";
        assert!(why(hw(no_table)).contains("[rpi]"));
        assert!(why(hw(&pi.replace("bcm2711-rpi-4-b.dtb", "../x.dtb"))).contains("plain file name"));
        assert!(why(hw(&pi.replace("[\"bcm2711-rpi-4-b.dtb\"]", "[]")))
            .contains("device_trees is empty"));
        let uefi_with_rpi = pi.replace("firmware = \"rpi\"", "firmware = \"uefi\"");
        assert!(why(hw(&uefi_with_rpi)).contains("needs firmware = \"rpi\""));
        let no_modules = "arch = \"arm64\"\nfirmware = \"uefi\"\ninitramfs = \"nodeforge\"\n";
        assert!(why(hw(no_modules)).contains("initramfs_modules"));
        let stray = "arch = \"amd64\"\nfirmware = \"uefi\"\ninitramfs_modules = [\"ext4\"]\n";
        assert!(why(hw(stray)).contains("only used with"));
    }

    #[test]
    fn tags() {
        accepts(tailscale_tag, &["tag:core"]);
        for bad in ["core", "tag:"] {
            assert!(
                why(tailscale_tag(bad)).contains("must look like `tag:name`"),
                "{bad}"
            );
        }
    }
}

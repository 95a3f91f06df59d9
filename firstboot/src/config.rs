//! The baked agent config (`/etc/nodeforge/firstboot.toml`), written by the
//! builder from the profile.

use serde::{Deserialize, Serialize};

/// Where the builder writes the baked config inside the image.
pub const BAKED_CONFIG_PATH: &str = "/etc/nodeforge/firstboot.toml";

/// What the builder bakes into the image for the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BakedConfig {
    /// Profile name the image was built from.
    pub profile: String,
    /// Role of the node (core, data, sentinel …).
    pub role: String,
    /// Hostname used when the seed gives none.
    pub hostname: String,
    /// The user that per-node SSH keys from the seed are added to.
    #[serde(default)]
    pub admin_user: Option<String>,
    /// Tailnet settings; absent means the node does not join a tailnet.
    #[serde(default)]
    pub tailscale: Option<TailscaleConfig>,
    /// Where the agent looks for the per-node seed, first match wins.
    #[serde(default = "default_seed_paths")]
    pub seed_paths: Vec<String>,
    /// Bound on waiting for a default route, in seconds.
    #[serde(default = "default_network_timeout")]
    pub network_timeout_secs: u64,
    /// Data disks: which disk each rule takes, and how it is formatted
    /// (once, only when blank) and mounted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub storage: Vec<StorageRule>,
    /// The build's SOURCE_DATE_EPOCH: the order of releases, so the
    /// updater can tell a downgrade (the image key is a hash, no order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    /// A/B root slots and the state partition, when the image has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<crate::slots::SlotsConfig>,
    /// Where `nodeforge-update.timer` looks for newer releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_url: Option<String>,
}

/// The ESP on UEFI images, the firmware partition on Raspberry Pi.
pub fn default_seed_paths() -> Vec<String> {
    vec![
        "/boot/efi/nodeforge-seed.toml".into(),
        "/boot/firmware/nodeforge-seed.toml".into(),
    ]
}

fn default_network_timeout() -> u64 {
    120
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailscaleConfig {
    /// Tags advertised when joining, e.g. `tag:core`.
    pub tags: Vec<String>,
    /// Bound on `tailscale up`, in seconds.
    #[serde(default = "default_tailscale_timeout")]
    pub timeout_secs: u64,
    /// `--accept-routes`: use the subnets the tailnet's routers advertise.
    #[serde(default)]
    pub accept_routes: bool,
    /// `--ssh`: Tailscale SSH.
    #[serde(default)]
    pub ssh: bool,
    /// `--advertise-routes`: subnets this node routes for the tailnet.
    #[serde(default)]
    pub advertise_routes: Vec<String>,
}

fn default_tailscale_timeout() -> u64 {
    60
}

/// A data disk rule: the disk it takes, its filesystem label (how it is
/// recognised and mounted later), filesystem, mount point and options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageRule {
    pub label: String,
    #[serde(default)]
    pub filesystem: Filesystem,
    /// Absolute mount point.
    pub mount: String,
    /// Mount options besides `nofail` (which is always added).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    #[serde(rename = "match")]
    pub matcher: DiskMatch,
}

/// Which disks a rule may take; every given condition must hold. Globs
/// know `*` and `?`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Glob on the disk's model (sysfs `device/model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Glob on the disk's serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Glob on a name in /dev/disk/by-id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_id: Option<String>,
    /// Glob on a name in /dev/disk/by-path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_path: Option<String>,
    /// Of the disks that match, take the largest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub largest: bool,
}

impl DiskMatch {
    /// True when no condition is given (a rule must say which disk).
    pub fn is_empty(&self) -> bool {
        *self == DiskMatch::default()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    #[default]
    Ext4,
    Xfs,
}

impl Filesystem {
    pub fn name(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
        }
    }

    /// The longest label the filesystem stores.
    pub fn max_label(self) -> usize {
        match self {
            Filesystem::Ext4 => 16,
            Filesystem::Xfs => 12,
        }
    }

    /// The command that makes the filesystem on `dev` with `label`.
    pub fn mkfs(self, dev: &str, label: &str) -> Vec<String> {
        let v: &[&str] = match self {
            Filesystem::Ext4 => &["mkfs.ext4", "-q", "-L", label, dev],
            Filesystem::Xfs => &["mkfs.xfs", "-q", "-L", label, dev],
        };
        v.iter().map(|s| s.to_string()).collect()
    }
}

/// Why a storage rule is unusable. The kind tells which field is wrong (the
/// builder points its profile error at that field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageRuleError {
    #[error("storage label `{label}` must be 1 to {} letters, digits, `-` or `_` ({} labels)", .filesystem.max_label(), .filesystem.name())]
    Label {
        label: String,
        filesystem: Filesystem,
    },
    #[error("storage `{label}`: mount point `{mount}` must be an absolute path below / without spaces, `.` or `..`")]
    MountPoint { label: String, mount: String },
    #[error("storage `{label}`: no disk matcher: give at least one of min_size, max_size, model, serial, by_id, by_path, largest")]
    NoMatcher { label: String },
    #[error("storage `{label}`: min_size is above max_size")]
    SizeRange { label: String },
    #[error(
        "storage `{label}`: mount option `{option}` must be one option without commas or spaces"
    )]
    MountOption { label: String, option: String },
}

impl StorageRule {
    /// Checks what the schema alone cannot: label, mount point, matcher
    /// and options.
    pub fn check(&self) -> Result<(), StorageRuleError> {
        let label = || self.label.clone();
        let l = &self.label;
        if l.is_empty()
            || l.len() > self.filesystem.max_label()
            || !l
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(StorageRuleError::Label {
                label: label(),
                filesystem: self.filesystem,
            });
        }
        let m = &self.mount;
        if !m.starts_with('/')
            || m == "/"
            || m.contains("//")
            || m.split('/').any(|c| c == "." || c == "..")
            || m.contains(|c: char| c.is_whitespace() || c.is_control())
        {
            return Err(StorageRuleError::MountPoint {
                label: label(),
                mount: m.clone(),
            });
        }
        if self.matcher.is_empty() {
            return Err(StorageRuleError::NoMatcher { label: label() });
        }
        if let (Some(lo), Some(hi)) = (self.matcher.min_bytes, self.matcher.max_bytes) {
            if lo > hi {
                return Err(StorageRuleError::SizeRange { label: label() });
            }
        }
        if let Some(o) = self
            .options
            .iter()
            .find(|o| o.is_empty() || o.contains(|c: char| c == ',' || c.is_whitespace()))
        {
            return Err(StorageRuleError::MountOption {
                label: label(),
                option: o.clone(),
            });
        }
        Ok(())
    }
}

/// Shell-style glob with `*` and `?` (no classes), whole string.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

impl BakedConfig {
    /// A config with every optional setting at its default, for struct
    /// update syntax: `BakedConfig { admin_user, ..BakedConfig::new(p, r, h) }`.
    pub fn new(profile: &str, role: &str, hostname: &str) -> Self {
        BakedConfig {
            profile: profile.to_string(),
            role: role.to_string(),
            hostname: hostname.to_string(),
            admin_user: None,
            tailscale: None,
            seed_paths: default_seed_paths(),
            network_timeout_secs: default_network_timeout(),
            storage: Vec::new(),
            epoch: None,
            slots: None,
            update_url: None,
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("BakedConfig always serialises")
    }

    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The baked config of the image at `root`.
    pub fn load(root: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let path = crate::fsutil::under(root, BAKED_CONFIG_PATH);
        let text = crate::fsutil::read_optional(&path)?
            .with_context(|| format!("{} is missing", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baked_config_round_trips() {
        let cfg = BakedConfig {
            profile: "base".into(),
            role: "base".into(),
            hostname: "node".into(),
            admin_user: Some("admin".into()),
            tailscale: Some(TailscaleConfig {
                tags: vec!["tag:core".into()],
                timeout_secs: 30,
                accept_routes: true,
                ssh: false,
                advertise_routes: vec!["192.168.1.0/24".into()],
            }),
            seed_paths: default_seed_paths(),
            network_timeout_secs: 5,
            epoch: Some(1_700_000_000),
            update_url: Some("http://core:8080/releases/web".into()),
            slots: Some(crate::slots::SlotsConfig {
                disk_guid: "d".into(),
                a: "a".into(),
                b: "b".into(),
                state: "s".into(),
                tries: 2,
            }),
            storage: vec![StorageRule {
                label: "media".into(),
                filesystem: Filesystem::Xfs,
                mount: "/srv/media".into(),
                options: vec!["noatime".into()],
                matcher: DiskMatch {
                    min_bytes: Some(1 << 30),
                    serial: Some("WD-*".into()),
                    largest: true,
                    ..DiskMatch::default()
                },
            }],
        };
        assert_eq!(BakedConfig::from_toml(&cfg.to_toml()).unwrap(), cfg);
    }

    #[test]
    fn older_configs_get_defaults() {
        let cfg = BakedConfig::from_toml("profile='a'\nrole='b'\nhostname='c'\n").unwrap();
        assert_eq!(cfg, BakedConfig::new("a", "b", "c"));
        assert_eq!(cfg.seed_paths, default_seed_paths());
        assert_eq!(cfg.network_timeout_secs, 120);
    }

    #[test]
    fn globs_match_whole_names() {
        for (p, t, want) in [
            ("WD-*", "WD-123", true),
            ("WD-*", "xWD-123", false),
            ("*-part?", "virtio-data-part1", true),
            ("*-part?", "virtio-data-part12", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*", "", true),
        ] {
            assert_eq!(glob_match(p, t), want, "{p} vs {t}");
        }
    }

    #[test]
    fn storage_rules_are_checked() {
        let good = StorageRule {
            label: "media".into(),
            filesystem: Filesystem::Ext4,
            mount: "/srv/media".into(),
            options: vec!["noatime".into()],
            matcher: DiskMatch {
                largest: true,
                ..DiskMatch::default()
            },
        };
        assert_eq!(good.check(), Ok(()));
        let bad = |f: &dyn Fn(&mut StorageRule), want: &str| {
            let mut r = good.clone();
            f(&mut r);
            let e = r.check().unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        };
        bad(&|r| r.matcher = DiskMatch::default(), "no disk matcher");
        bad(
            &|r| r.mount = "srv/media".into(),
            "must be an absolute path",
        );
        bad(&|r| r.mount = "/".into(), "must be an absolute path");
        bad(
            &|r| r.mount = "/srv/../etc".into(),
            "must be an absolute path",
        );
        bad(&|r| r.label = "a-label-far-too-long".into(), "1 to 16");
        bad(
            &|r| {
                r.filesystem = Filesystem::Xfs;
                r.label = "thirteen-char".into()
            },
            "1 to 12",
        );
        bad(&|r| r.options = vec!["a,b".into()], "mount option");
        let mut r = good.clone();
        r.options = vec!["ro".into(), "a b".into()];
        assert_eq!(
            r.check(),
            Err(StorageRuleError::MountOption {
                label: "media".into(),
                option: "a b".into()
            })
        );
        bad(
            &|r| {
                r.matcher.min_bytes = Some(2);
                r.matcher.max_bytes = Some(1)
            },
            "min_size is above max_size",
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err =
            BakedConfig::from_toml("profile='a'\nrole='b'\nhostname='c'\nbogus=1\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}

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
}

fn default_tailscale_timeout() -> u64 {
    60
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
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("BakedConfig always serialises")
    }

    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
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
            }),
            seed_paths: default_seed_paths(),
            network_timeout_secs: 5,
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
    fn unknown_keys_are_rejected() {
        let err =
            BakedConfig::from_toml("profile='a'\nrole='b'\nhostname='c'\nbogus=1\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}

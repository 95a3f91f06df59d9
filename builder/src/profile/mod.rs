//! Profiles: a role's declarative description, its `extends` chain and
//! its hardware class, resolved into one validated [`Profile`].

mod apt;
pub mod error;
mod file;
pub mod members;
mod resolve;
pub mod size;
mod storage;
mod tailnet;
mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

pub use error::{ProfileError, ProfileErrors};
pub use file::{Arch, FirewallFile, Firmware, InitramfsKind, OutputFormat, RpiFile};
pub use members::load;
pub use size::ByteSize;

/// Packages every image needs for nodeforge's own boot path, whatever the
/// profile says.
pub const REQUIRED_PACKAGES: &[&str] = &["systemd", "systemd-sysv", "udev"];

/// A profile with its `extends` chain merged and everything validated.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub name: String,
    pub role: String,
    pub description: String,
    pub hostname: String,
    /// The profile files that shaped this one, the root of the chain first.
    pub sources: Vec<PathBuf>,
    pub hardware: Hardware,
    pub debian: Debian,
    /// Extra apt sources (signed repositories, local .deb directories).
    pub apt: Apt,
    /// Packages the profile chain asks for (hardware and required ones are
    /// added by [`Profile::all_packages`]).
    pub packages: Vec<String>,
    pub overlays: Vec<Overlay>,
    pub users: Vec<User>,
    pub disk: Disk,
    pub outputs: Vec<OutputFormat>,
    pub vars: BTreeMap<String, serde_json::Value>,
    pub tailscale: Option<Tailscale>,
    /// The fleet's tailnet settings (`[tailnet]`).
    pub tailnet: Tailnet,
    /// The roles of this profile's fleet, itself included: the profiles
    /// beside the file that declares `[tailnet]` whose `[tailscale]` names
    /// the same fleet (see [`members`]).
    pub fleet: Vec<FleetMember>,
    pub stacks: Vec<Stack>,
    /// Ollama models baked into the image (`[[models]]`), as written.
    pub models: Vec<String>,
    /// Data disk rules the first-boot agent applies.
    pub storage: Vec<nodeforge_firstboot::config::StorageRule>,
    /// The host firewall (`[firewall]`); None: the image has none.
    pub firewall: Option<Firewall>,
    /// The release key's OpenSSH public key line (`[update] key`), baked
    /// as the node updater's trust; None: the node takes no updates.
    pub release_key: Option<String>,
    /// `[update] url`: where the node's timer looks for newer releases.
    pub update_url: Option<String>,
    /// `[update] tries`: boots a new slot gets before the fallback (None:
    /// the agent's default, [`nodeforge_firstboot::slots::TRIES`]).
    pub update_tries: Option<u32>,
}

/// `[firewall]`, merged: the ports the LAN may reach (see
/// [`crate::firewall`] for the rules made from it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Firewall {
    pub lan_tcp: Vec<u16>,
    pub lan_udp: Vec<u16>,
}

/// `[tailnet]`, merged: the fleet's tailnet settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tailnet {
    /// MagicDNS suffix; a node is `<hostname>.<domain>`.
    pub domain: Option<String>,
    /// The role whose node serves the fleet (Loki, Prometheus, Traefik).
    pub gateway: Option<String>,
    pub accept_routes: bool,
    pub ssh: bool,
    /// Role → subnets its nodes advertise.
    pub routes: BTreeMap<String, Vec<String>>,
    /// The file that declared `domain`: the fleet's profiles sit beside it.
    #[serde(skip)]
    pub declared_in: Option<PathBuf>,
}

/// One role of the fleet, as the other roles' templates see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FleetMember {
    pub name: String,
    pub role: String,
    pub hostname: String,
    /// `<hostname>.<domain>` when the fleet has a MagicDNS domain.
    pub fqdn: Option<String>,
    pub tags: Vec<String>,
    /// It runs the host's node_exporter (port 9100).
    pub node_exporter: bool,
}

/// Packages an image with stacks needs (trixie's names: the engine, its
/// CLI and the compose plugin are three packages).
pub const STACK_PACKAGES: &[&str] = &["docker.io", "docker-cli", "docker-compose"];

/// A compose stack and the container images it needs.
#[derive(Debug, Clone, Serialize)]
pub struct Stack {
    pub name: String,
    /// The compose template (rendered with tera at build time).
    pub compose: PathBuf,
    pub env: BTreeMap<String, String>,
    /// Names of the secrets the agent provides at first boot.
    pub secrets: Vec<String>,
    /// Image references as the profile writes them (each parses).
    pub images: Vec<String>,
    pub probes: Vec<Probe>,
    pub health_timeout_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    pub service: String,
    pub check: ProbeCheck,
    /// Why a TCP probe is all the service offers (see [`ProbeFile`]).
    ///
    /// [`ProbeFile`]: file::ProbeFile
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeCheck {
    Http(String),
    Tcp(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct Hardware {
    pub name: String,
    pub description: String,
    pub file: PathBuf,
    pub arch: Arch,
    pub firmware: Firmware,
    pub packages: Vec<String>,
    pub kernel_cmdline: Vec<String>,
    pub initramfs: InitramfsKind,
    pub initramfs_modules: Vec<String>,
    pub rpi: Option<RpiFile>,
    /// The hardware's own repositories and overlays (merged into the
    /// profile's by [`load`]).
    pub apt: Apt,
    pub overlays: Vec<Overlay>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Debian {
    pub suite: String,
    /// The mirror apt uses (the snapshot's URL when one is pinned).
    pub mirror: String,
    pub snapshot: Option<String>,
    pub components: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Apt {
    pub repositories: Vec<AptRepository>,
    /// Directories of .deb files.
    pub local: Vec<PathBuf>,
}

/// A signed third-party repository whose key file was checked against its
/// declared fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AptRepository {
    pub name: String,
    pub url: String,
    pub suite: String,
    pub components: Vec<String>,
    pub key: RepoKey,
    /// 40 uppercase hex digits.
    pub fingerprint: String,
}

/// Where a repository's signing key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RepoKey {
    /// A file of the project, checked when the profile is loaded.
    File(PathBuf),
    /// The vendor's URL: fetched once into the build cache and checked
    /// against the fingerprint before use (apt::keyring).
    Url(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct Overlay {
    pub name: String,
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    pub shell: String,
    pub sudo: bool,
    /// OpenSSH public key lines, each already parsed once to validate it.
    pub authorized_keys: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Disk {
    pub size: ByteSize,
    pub esp_size: ByteSize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tailscale {
    pub tags: Vec<String>,
    pub timeout_secs: u64,
    /// tagOwners of this role's tags in the tailnet policy.
    pub owners: Vec<String>,
    /// Roles of one fleet are each other's `fleet` in accept rules.
    pub fleet: Option<String>,
    pub allow: Vec<TailnetAllow>,
    pub accept: Vec<TailnetAccept>,
}

/// This role's tags may reach `to` (a tag or `*`) on `ports` (empty: all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TailnetAllow {
    pub to: String,
    pub ports: Vec<u16>,
}

/// `from` (a tag, `*` or `fleet`) may reach this role's tags on `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TailnetAccept {
    pub from: String,
    pub ports: Vec<u16>,
}

impl Profile {
    /// Boots a newly written slot gets: `[update] tries`, or the agent's
    /// default.
    pub fn slot_tries(&self) -> u32 {
        self.update_tries
            .unwrap_or(nodeforge_firstboot::slots::TRIES)
    }

    /// Whether the image has A/B root slots and a state partition: every
    /// profile that takes updates (`[update]`).
    pub fn ab_slots(&self) -> bool {
        self.release_key.is_some()
    }

    /// The subnets this role's nodes advertise (`[tailnet.routes]`).
    pub fn advertised_routes(&self) -> Vec<String> {
        self.tailnet
            .routes
            .get(&self.role)
            .cloned()
            .unwrap_or_default()
    }

    /// The fleet member that serves the fleet (`[tailnet] gateway`).
    pub fn gateway(&self) -> Option<&FleetMember> {
        let role = self.tailnet.gateway.as_ref()?;
        self.fleet.iter().find(|m| &m.role == role)
    }

    /// Every package the rootfs gets: required, hardware, then profile,
    /// sorted and without repeats (so the set, not the order of the
    /// profile's lists, shapes the rootfs).
    pub fn all_packages(&self) -> Vec<String> {
        let mut all: Vec<String> = REQUIRED_PACKAGES
            .iter()
            .map(|s| s.to_string())
            .chain(self.hardware.packages.iter().cloned())
            .chain(self.packages.iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// The variables overlay templates see.
    pub fn template_context(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "role": self.role,
            "description": self.description,
            "hostname": self.hostname,
            "arch": self.hardware.arch.debian(),
            "hardware": self.hardware.name,
            "suite": self.debian.suite,
            "packages": self.all_packages(),
            "users": self.users.iter().map(|u| &u.name).collect::<Vec<_>>(),
            "tailscale_tags": self.tailscale.as_ref().map(|t| t.tags.clone()).unwrap_or_default(),
            "vars": self.vars,
            "tailnet": {
                "domain": self.tailnet.domain,
                "accept_routes": self.tailnet.accept_routes,
                "ssh": self.tailnet.ssh,
                "routes": self.advertised_routes(),
                "gateway": self.gateway(),
            },
            "fleet": self.fleet,
        })
    }
}

//! The on-disk shape of profile and hardware files, parsed strictly.
//! Every field is optional here because a profile may get it from the
//! profile it extends; `resolve` decides what is required.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::size::ByteSize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    pub name: Option<String>,
    pub role: Option<String>,
    pub description: Option<String>,
    /// Another profile this one builds on, relative to this file.
    pub extends: Option<Spanned<String>>,
    /// Fragments merged on top of this file, in order, relative to it
    /// (e.g. one repository entry several profiles share). A fragment
    /// may neither extend nor include.
    #[serde(default)]
    pub include: Vec<Spanned<String>>,
    /// A hardware class: a name in hardware/ or a path to a TOML file.
    pub hardware: Option<Spanned<String>>,
    pub hostname: Option<Spanned<String>>,
    pub debian: Option<DebianFile>,
    /// Extra apt sources: signed third-party repositories, local .debs.
    pub apt: Option<AptFile>,
    #[serde(default)]
    pub packages: Vec<Spanned<String>>,
    #[serde(default)]
    pub overlays: Vec<Spanned<String>>,
    #[serde(default)]
    pub users: Vec<UserFile>,
    pub disk: Option<DiskFile>,
    pub outputs: Option<OutputsFile>,
    /// Free-form values for overlay templates.
    #[serde(default)]
    pub vars: BTreeMap<String, toml::Value>,
    pub tailscale: Option<TailscaleFile>,
    /// The fleet's tailnet settings (declared once, in profiles/node.toml).
    pub tailnet: Option<TailnetFile>,
    /// Compose stacks baked into the image with their container images.
    #[serde(default)]
    pub stacks: Vec<StackFile>,
    /// Ollama models baked into the image's model store, locked like the
    /// stacks' images (`llama3.2`, `nomic-embed-text:v1.5`,
    /// `host/namespace/model:tag`).
    #[serde(default)]
    pub models: Vec<ModelFile>,
    /// Stacks of the extended profiles this one leaves out, by name (a
    /// test profile that boots a role without its services).
    #[serde(default)]
    pub exclude_stacks: Vec<Spanned<String>>,
    /// Data disks: which disk, formatted how (once, only when blank),
    /// mounted where.
    #[serde(default)]
    pub storage: Vec<StorageFile>,
    /// The host firewall: what the LAN may reach.
    pub firewall: Option<FirewallFile>,
    /// Signed updates: the release key the node trusts.
    pub update: Option<UpdateFile>,
}

/// `[update]`: `key` is the `.pub` of `nodeforge keys generate`, baked
/// into the image as the one key whose releases the node's updater
/// installs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateFile {
    pub key: Spanned<String>,
    /// Where the node looks for newer releases by itself (a timer): the
    /// build's directory, e.g. `serve`'s `http://HOST:PORT/releases/NAME`.
    pub url: Option<Spanned<String>>,
    /// How many boots a newly written slot gets before systemd-boot falls
    /// back to the other slot (boot counting's `+N`; default 3).
    pub tries: Option<Spanned<u32>>,
}

/// `[firewall]`: the node's host firewall. Loopback, `tailscale0` (where
/// the tailnet policy decides) and the node's container bridges pass;
/// from every other interface (the LAN) only these ports. A key given
/// here replaces the extended profile's list, so a role can close a port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallFile {
    /// TCP ports open to the LAN (e.g. 22 for SSH).
    pub lan_tcp: Option<Vec<Spanned<u16>>>,
    /// UDP ports open to the LAN (e.g. 53 for a DNS server).
    pub lan_udp: Option<Vec<Spanned<u16>>>,
}

/// `[[storage]]`: a data disk rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageFile {
    /// The filesystem label: how the disk is recognised and mounted.
    pub label: Spanned<String>,
    /// `ext4` (default) or `xfs`.
    pub filesystem: Option<Spanned<nodeforge_firstboot::config::Filesystem>>,
    /// Absolute mount point.
    pub mount: Spanned<String>,
    #[serde(default)]
    pub options: Vec<Spanned<String>>,
    /// Which disk: every given condition must hold.
    #[serde(rename = "match")]
    pub matcher: Option<Spanned<MatchFile>>,
}

/// `[storage.match]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    pub min_size: Option<ByteSize>,
    pub max_size: Option<ByteSize>,
    /// Globs (`*`, `?`) on the model, the serial number, and names in
    /// /dev/disk/by-id and /dev/disk/by-path.
    pub model: Option<String>,
    pub serial: Option<String>,
    pub by_id: Option<String>,
    pub by_path: Option<String>,
    /// Of the matching disks (root's never among them), take the largest.
    #[serde(default)]
    pub largest: bool,
}

/// `[[models]]`: one Ollama model.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// As `ollama pull` takes it.
    pub name: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackFile {
    pub name: Spanned<String>,
    /// The compose file, a tera template, relative to `stacks/`
    /// (e.g. `web/compose.yaml.tera`).
    pub compose: Spanned<String>,
    /// Written to the stack's `.env` and seen by the template as `env`.
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<String>>,
    /// Names of secrets the compose file interpolates (`${DB_PASSWORD}`):
    /// never values; the first-boot agent takes each from the node's seed
    /// or generates it once, into a 0600 env file.
    #[serde(default)]
    pub secrets: Vec<Spanned<String>>,
    /// Container images the stack runs, e.g. `docker.io/library/nginx:1.27`.
    #[serde(default)]
    pub images: Vec<Spanned<String>>,
    #[serde(default)]
    pub probes: Vec<ProbeFile>,
    /// Bound on the wait for the stack's services to become healthy.
    pub health_timeout_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeFile {
    pub service: Spanned<String>,
    /// `http://host:port/path`: healthy when it answers 200.
    pub http: Option<Spanned<String>>,
    /// `host:port`: healthy when a TCP connect succeeds.
    pub tcp: Option<Spanned<String>>,
    /// Why a TCP connect is the best check the service offers (no health
    /// endpoint, no tool in its image): only with `tcp`.
    pub reason: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DebianFile {
    pub suite: Option<String>,
    pub mirror: Option<Spanned<String>>,
    /// A snapshot.debian.org timestamp (YYYYMMDDTHHMMSSZ): the archive as
    /// it was then, for builds that give the same image every time.
    pub snapshot: Option<Spanned<String>>,
    pub components: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AptFile {
    #[serde(default)]
    pub repositories: Vec<RepositoryFile>,
    #[serde(default)]
    pub local: Vec<LocalDebsFile>,
}

/// `[[apt.repositories]]`: a third-party apt repository and its signing key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryFile {
    pub name: Spanned<String>,
    pub url: Spanned<String>,
    /// A suite (`stable`), or a flat repository's path ending in `/`.
    pub suite: Spanned<String>,
    #[serde(default)]
    pub components: Vec<Spanned<String>>,
    /// The repository's public key (armored or binary), relative to the
    /// profile's folder or the project root. Required: unsigned
    /// repositories are refused.
    pub key: Option<Spanned<String>>,
    /// Where the vendor publishes the key, for a key whose bytes are not
    /// kept in the project: the build fetches it once into the cache and
    /// refuses it unless its fingerprint is the declared one.
    pub key_url: Option<Spanned<String>>,
    /// The key's OpenPGP v4 fingerprint, checked against the file.
    pub fingerprint: Option<Spanned<String>>,
}

/// `[[apt.local]]`: a directory of .deb files, an offline package source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalDebsFile {
    pub path: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserFile {
    pub name: Spanned<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub shell: Option<String>,
    /// Adds the user to the sudo group with passwordless sudo.
    #[serde(default)]
    pub sudo: bool,
    #[serde(default)]
    pub authorized_keys: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DiskFile {
    pub size: Option<Spanned<ByteSize>>,
    pub esp_size: Option<Spanned<ByteSize>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OutputsFile {
    pub formats: Option<Vec<OutputFormat>>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// A raw disk image, `<name>.img`.
    Raw,
    /// A qcow2 copy of the raw image, `<name>.qcow2`.
    Qcow2,
    /// PXE/iPXE boot files: `<name>.vmlinuz`, `<name>.initrd`, the root as
    /// `<name>.squashfs` and `<name>.boot.ipxe` (see `nodeforge serve`).
    Netboot,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailscaleFile {
    pub tags: Vec<Spanned<String>>,
    pub timeout_secs: Option<u64>,
    /// Who may apply this role's tags (the policy's tagOwners); default
    /// `autogroup:admin`.
    pub owners: Option<Vec<Spanned<String>>>,
    /// The fleet the role belongs to: `accept.from = "fleet"` means the
    /// other roles of the same fleet (roles naming none form one).
    pub fleet: Option<Spanned<String>>,
    /// What this role's nodes may reach on the tailnet.
    #[serde(default)]
    pub allow: Vec<AllowFile>,
    /// Who may reach this role's nodes.
    #[serde(default)]
    pub accept: Vec<AcceptFile>,
}

/// `[tailnet]`: settings of the whole fleet's tailnet, in one place; what
/// is derived from them (MagicDNS names, the Loki URL, scrape targets) is
/// computed from this table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailnetFile {
    /// The tailnet's MagicDNS suffix (`tail79107c.ts.net`).
    pub domain: Option<Spanned<String>>,
    /// The role whose node serves the fleet (its Loki, Prometheus and
    /// Traefik): its hostname and MagicDNS name are looked up, not written.
    pub gateway: Option<Spanned<String>>,
    /// `tailscale up --accept-routes`: use the subnets other nodes route.
    pub accept_routes: Option<bool>,
    /// `tailscale up --ssh`: Tailscale SSH on every node.
    pub ssh: Option<bool>,
    /// Role → the subnets its nodes route for the tailnet
    /// (`--advertise-routes`).
    #[serde(default)]
    pub routes: BTreeMap<String, Vec<Spanned<String>>>,
}

/// `[[tailscale.allow]]`: this role's tags reach `to` on `ports`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowFile {
    /// A tag (`tag:data`) or `*` for every destination.
    pub to: Spanned<String>,
    /// Empty or absent: every port.
    #[serde(default)]
    pub ports: Vec<Spanned<u16>>,
}

/// `[[tailscale.accept]]`: `from` reaches this role's tags on `ports`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptFile {
    /// A tag, `*` (anyone on the tailnet) or `fleet` (the other roles of
    /// this role's fleet).
    pub from: Spanned<String>,
    #[serde(default)]
    pub ports: Vec<Spanned<u16>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareFile {
    pub name: Option<String>,
    pub description: Option<String>,
    pub arch: Arch,
    pub firmware: Firmware,
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub kernel_cmdline: Vec<String>,
    /// Who makes the initramfs (default: Debian's initramfs-tools).
    #[serde(default)]
    pub initramfs: InitramfsKind,
    /// Kernel modules the nodeforge initramfs loads to reach the root
    /// filesystem (their dependencies are added).
    #[serde(default)]
    pub initramfs_modules: Vec<String>,
    /// Raspberry Pi boot partition contents; required with `firmware = "rpi"`.
    pub rpi: Option<RpiFile>,
    /// Signed third-party repositories the hardware's packages come from
    /// (a profile's repository of the same name replaces one).
    pub apt: Option<AptFile>,
    /// File trees (in overlays/) every image for this hardware gets, before
    /// the profile's own.
    #[serde(default)]
    pub overlays: Vec<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RpiFile {
    /// Files of Debian's raspi-firmware (/usr/lib/raspi-firmware/) the
    /// board's boot ROM or EEPROM loads (start4.elf, fixup4.dat …).
    #[serde(default)]
    pub firmware_files: Vec<String>,
    /// Device trees from the kernel package's broadcom/ directory.
    pub device_trees: Vec<String>,
    /// Extra config.txt lines, after the ones nodeforge writes.
    #[serde(default)]
    pub config: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitramfsKind {
    /// Debian's initramfs-tools, run inside the image by the kernel package.
    #[default]
    InitramfsTools,
    /// A small busybox initramfs written by nodeforge on the build host:
    /// a foreign-architecture image then runs no initramfs generator under
    /// emulation (update-initramfs is diverted in the image).
    Nodeforge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// Debian's name for the architecture.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The Rust target triple the agent is built for.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// The file name UEFI firmware boots from a removable ESP.
    pub fn efi_boot_file(self) -> &'static str {
        match self {
            Arch::Amd64 => "BOOTX64.EFI",
            Arch::Arm64 => "BOOTAA64.EFI",
        }
    }

    /// systemd-boot's binary name in systemd-boot-efi.
    pub fn systemd_boot_file(self) -> &'static str {
        match self {
            Arch::Amd64 => "systemd-bootx64.efi",
            Arch::Arm64 => "systemd-bootaa64.efi",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// UEFI with a GPT disk and systemd-boot on the ESP.
    Uefi,
    /// Raspberry Pi boot ROM/EEPROM: an MBR disk whose first partition is
    /// FAT32 with the Pi firmware, config.txt, cmdline.txt, kernel and initrd.
    Rpi,
}

impl Firmware {
    /// Where the FAT boot partition is mounted on a running node (the
    /// agent looks for the per-node seed there).
    pub fn boot_mount(self) -> &'static str {
        match self {
            Firmware::Uefi => "/boot/efi",
            Firmware::Rpi => "/boot/firmware",
        }
    }

    /// The partition table the firmware reads.
    pub fn table(self) -> crate::disk::TableKind {
        match self {
            Firmware::Uefi => crate::disk::TableKind::Gpt,
            Firmware::Rpi => crate::disk::TableKind::Mbr,
        }
    }
}

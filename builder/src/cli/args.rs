//! The arguments of every `nodeforge` command (clap types), apart from
//! `tailnet`'s, which sit with what they run in `tailnet.rs`. They turn
//! into the library's plain option structs; nothing below `cli` knows clap.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use nodeforge_firstboot::seed::Seed;

use crate::boot::Accel;
use crate::flash::FlashOptions;
use crate::seed::{SeedOptions, SeedRequest};
use crate::serve::{ServeOptions, IPXE_DIR};

#[derive(Debug, Parser)]
#[command(
    name = "nodeforge",
    version,
    about = "Build bootable per-role node images and provision the machines that boot them"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate profiles without building anything.
    Check {
        #[arg(required = true)]
        profiles: Vec<PathBuf>,
    },
    /// Print the resolved plan of a profile: packages, overlay files,
    /// partitions and each step's inputs.
    Plan {
        profile: PathBuf,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
        /// The cache whose remembered archive date an unreachable archive
        /// falls back to (as `build --cache-dir`).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Do not ask the archive for its date; use the cache's.
        #[arg(long)]
        offline: bool,
    },
    /// Build a profile's disk image.
    Build(BuildArgs),
    /// Resolve the container images of a profile's stacks to digests for
    /// its architecture and write them to `<profile>.lock.toml`.
    Lock {
        profile: PathBuf,
        /// Resolve a registry's images through a mirror, keeping their
        /// names: `--mirror docker.io=http://127.0.0.1:5000` (repeatable).
        /// The lock records it, and builds fetch the blobs from it.
        #[arg(long = "mirror", value_name = "REGISTRY=URL", value_parser = crate::oci::Mirror::parse)]
        mirrors: Vec<crate::oci::Mirror>,
    },
    /// Boot an image in QEMU and wait for a line on its serial console.
    Boot(BootArgs),
    /// Stamp a per-node seed (hostname, auth key, SSH keys, tags) into an
    /// image's boot partition.
    Customize(CustomizeArgs),
    /// Write an image to an SD card or USB stick: only its mapped blocks,
    /// verified, refusing the wrong disk; optionally stamping the node's seed.
    /// IMAGE may be a pushed build, oci://HOST/REPO@sha256:…, streamed.
    Flash(FlashArgs),
    /// Publish a build (image compressed with zstd, block map, build
    /// manifest, netboot files) to a registry as one OCI artifact; prints
    /// its pinned oci://…@sha256:… reference.
    Push {
        /// The build directory (`nodeforge build -o DIR`).
        dir: PathBuf,
        /// Where: oci://HOST[:PORT]/REPOSITORY[:TAG].
        reference: String,
        /// Which build of DIR (NAME.img), when it holds several.
        #[arg(long)]
        name: Option<String>,
        /// Registry credentials in Docker's config format
        /// [default: $DOCKER_CONFIG/config.json or ~/.docker/config.json].
        #[arg(long, value_name = "FILE")]
        registry_auth_file: Option<PathBuf>,
    },
    /// Write an image's block map (bmaptool's format 2.0): the ranges that
    /// hold data, with their sha256. Builds write one for every image.
    Bmap {
        image: PathBuf,
        /// Where to write it [default: IMAGE.bmap].
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Inspect or prune the build cache.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
        /// The cache (default: $NODEFORGE_CACHE_DIR or ~/.cache/nodeforge).
        #[arg(long, global = true)]
        cache_dir: Option<PathBuf>,
    },
    /// Release keys: the ed25519 key pair that signs builds.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Builds' releases (NAME.release.json).
    Release {
        #[command(subcommand)]
        command: ReleaseCommand,
    },
    /// The tailnet: policy file from the profiles, auth keys through the API.
    Tailnet {
        #[command(subcommand)]
        command: super::tailnet::TailnetCommand,
    },
    /// Network-boot a fleet: iPXE scripts, kernels, root squashfs and
    /// once-only seeds by MAC address over HTTP (and iPXE over TFTP).
    Serve(ServeArgs),
    /// Runs on a machine netbooted in install mode (its initramfs starts
    /// it): writes the role's image to the local disk the fleet's rule
    /// picks, as `flash` does, and stamps the node's seed.
    #[command(hide = true)]
    Netinstall {
        /// The install order `nodeforge serve` made for this machine.
        order_url: String,
        /// Where the image's mapped ranges are staged (RAM on a netbooted machine).
        #[arg(long, default_value = "/var/tmp")]
        staging_dir: PathBuf,
    },
    /// Print a shell's completion script, e.g.
    /// `nodeforge completions bash > /usr/share/bash-completion/completions/nodeforge`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (nodeforge.1 and one per command) into DIR,
    /// e.g. /usr/local/share/man/man1.
    Man { dir: PathBuf },
    /// List the host programs nodeforge needs; --install installs the missing ones.
    Doctor {
        #[arg(long)]
        install: bool,
        /// Print the apt packages of every requirement, one a line (those
        /// from bookworm-backports on bookworm marked so), and nothing else.
        #[arg(long, conflicts_with = "install")]
        packages: bool,
        /// Print each requirement and whether it is present as one JSON
        /// document (exit status 1 when one is missing).
        #[arg(long, conflicts_with_all = ["install", "packages"])]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    pub profile: PathBuf,
    /// Where the image, its sha256 and manifest go.
    #[arg(long, short, default_value = "out")]
    pub output: PathBuf,
    /// Cache of build layers (default: $NODEFORGE_CACHE_DIR or ~/.cache/nodeforge).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Build from scratch, reusing no cached layer.
    #[arg(long)]
    pub no_cache: bool,
    /// Print nothing but errors.
    #[arg(long, conflicts_with = "json")]
    pub quiet: bool,
    /// Print step events and the result as JSON lines.
    #[arg(long)]
    pub json: bool,
    /// First-boot agent binary to install (default: built from source).
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Build container images from the blob cache alone, never contacting
    /// a registry.
    #[arg(long)]
    pub offline: bool,
    /// Build twice (the second time from scratch) and compare the images.
    #[arg(long)]
    pub verify_reproducible: bool,
    /// More output formats besides the profile's [outputs] (e.g. netboot); repeatable.
    #[arg(long = "format", value_enum)]
    pub formats: Vec<crate::profile::OutputFormat>,
    /// Take missing rootfs and step layers from this registry repository
    /// (oci://HOST/REPOSITORY), before building them here.
    #[arg(long, value_name = "REF", env = "NODEFORGE_CACHE_FROM")]
    pub cache_from: Option<String>,
    /// Push every rootfs and step layer the build made or reused to this
    /// registry repository (oci://HOST/REPOSITORY).
    #[arg(long, value_name = "REF", env = "NODEFORGE_CACHE_TO")]
    pub cache_to: Option<String>,
    /// Registry credentials in Docker's config format
    /// [default: $DOCKER_CONFIG/config.json or ~/.docker/config.json].
    #[arg(long, value_name = "FILE")]
    pub registry_auth_file: Option<PathBuf>,
    /// Sign the build's release (NAME.release.json: each file's size and
    /// sha256) with this key from `nodeforge keys generate`. The key is
    /// only read: it never enters the image, the cache or the output.
    #[arg(long, value_name = "FILE", env = "NODEFORGE_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a release key pair: DIR/NAME.key (private, 0600) and
    /// DIR/NAME.pub, both OpenSSH ed25519. Builds sign with the first
    /// (`build --signing-key`); `serve --release-key` trusts the second.
    /// An existing key is never replaced.
    Generate {
        #[arg(long, default_value = "keys")]
        dir: PathBuf,
        #[arg(long, default_value = "release")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// What a node running OLD would download to move to NEW: the chunks
    /// of NEW's root slot that OLD's lacks, against the whole slot and the
    /// slot compressed. OLD and NEW are releases or build directories.
    Diff {
        old: PathBuf,
        new: PathBuf,
        /// Print the figures as one JSON document.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List cached layers, most recently used first.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove cached layers and leftovers of interrupted builds.
    Prune {
        /// Remove layers not used for this long (e.g. 7d, 12h).
        #[arg(long)]
        older_than: Option<String>,
        /// Then remove the least recently used until the cache is at most this size (e.g. 20GiB).
        #[arg(long)]
        max_size: Option<String>,
        /// Print what was removed and kept as one JSON document.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct CustomizeArgs {
    /// The image, or a pushed build (oci://HOST/REPO@sha256:…, with -o).
    pub image: PathBuf,
    /// Stamp a copy written here instead of the image itself.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub seed: SeedArgs,
}

#[derive(Debug, clap::Args)]
pub struct BootArgs {
    pub image: PathBuf,
    /// Seconds to wait for the expected text.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Text on the serial console that means success.
    #[arg(long, default_value = nodeforge_firstboot::READY_MARKER)]
    pub expect: String,
    /// Forward this host port (on 127.0.0.1) to the guest's SSH.
    #[arg(long)]
    pub ssh_port: Option<u16>,
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u32,
    /// Keep the serial console log in this file.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Write the guest's changes into the image (default: discarded).
    #[arg(long)]
    pub persist: bool,
    /// Print the result as one JSON document (image, accelerator, seconds).
    #[arg(long)]
    pub json: bool,
}

/// Write a node image to an SD card or USB stick (or a file) and read it back to verify.
#[derive(clap::Args, Debug, Clone)]
pub struct FlashArgs {
    /// Image to write: .img, .img.zst or .img.xz, or a pushed build
    /// (oci://HOST/REPOSITORY@sha256:…).
    pub image: PathBuf,
    /// Disk to overwrite (e.g. /dev/sdb), or a regular file to write into.
    pub device: PathBuf,
    /// Block map to use [default: <image>.bmap, or <image without .zst/.xz>.bmap].
    #[arg(long, value_name = "FILE")]
    pub bmap: Option<PathBuf>,
    /// Do not ask to type the device name first.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Allow a disk that is not removable (internal disks, USB SSDs).
    #[arg(long)]
    pub force: bool,
    /// Do not read the written data back to check it.
    #[arg(long)]
    pub no_verify: bool,
    /// No progress bars or summary.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Progress and the result as JSON lines on stdout instead of bars.
    #[arg(long)]
    pub json: bool,
    /// For an oci:// image, reach its registry through another URL:
    /// `--mirror registry.lan:5000=http://10.0.0.5:5000` (repeatable).
    #[arg(long = "mirror", value_name = "REGISTRY=URL", value_parser = crate::oci::Mirror::parse)]
    pub mirrors: Vec<crate::oci::Mirror>,
    /// The node's seed, stamped into the boot partition after the write.
    #[command(flatten)]
    pub seed: SeedArgs,
}

impl FlashArgs {
    pub fn options(&self) -> FlashOptions {
        FlashOptions {
            image: self.image.clone(),
            device: self.device.clone(),
            bmap: self.bmap.clone(),
            yes: self.yes,
            force: self.force,
            no_verify: self.no_verify,
            quiet: self.quiet,
            json: self.json,
            mirrors: self.mirrors.clone(),
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The fleet file: nodes by MAC address, their builds and seeds.
    #[arg(long)]
    pub nodes: PathBuf,
    /// Address for HTTP.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Also serve the iPXE binaries over TFTP, on this address.
    #[arg(long, num_args = 0..=1, default_missing_value = "0.0.0.0:69")]
    pub tftp: Option<SocketAddr>,
    /// The directory TFTP serves.
    #[arg(long, default_value = IPXE_DIR)]
    pub tftp_root: PathBuf,
    /// Where the builds' netboot files are (`nodeforge build -o DIR --format netboot`),
    /// or one pushed build, oci://HOST/REPO@sha256:… (fetched into the cache).
    #[arg(long, default_value = "out")]
    pub artifacts: PathBuf,
    /// Serve only builds whose release this key signed (the .pub that
    /// `nodeforge keys generate` wrote), and only files matching it.
    #[arg(long, value_name = "FILE")]
    pub release_key: Option<PathBuf>,
    /// Report each request as a JSON line on stdout instead of text on stderr.
    #[arg(long)]
    pub json: bool,
}

impl ServeArgs {
    pub fn options(&self) -> ServeOptions {
        ServeOptions {
            nodes: self.nodes.clone(),
            listen: self.listen,
            tftp: self.tftp,
            tftp_root: self.tftp_root.clone(),
            artifacts: self.artifacts.clone(),
            release_key: self.release_key.clone(),
        }
    }
}

/// Per-node seed values on the command line, shared by `customize` and
/// `flash`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SeedArgs {
    /// Take the node's values from the fleet file (see --fleet).
    #[arg(long)]
    pub node: Option<String>,
    /// The fleet file that --node looks in.
    #[arg(long, default_value = "fleet.toml")]
    pub fleet: PathBuf,
    #[arg(long)]
    pub hostname: Option<String>,
    /// File holding the Tailscale auth key, or - for standard input (never the key itself).
    #[arg(long)]
    pub authkey_file: Option<PathBuf>,
    /// An OpenSSH public key line, or a .pub file; repeatable.
    #[arg(long = "ssh-key")]
    pub ssh_keys: Vec<String>,
    /// An extra tailnet tag (tag:name); repeatable.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// A value for a secret the image's stacks declare, read from a file:
    /// NAME=FILE; repeatable. Undeclared secrets are ignored by the node;
    /// secrets not given are generated at first boot.
    #[arg(long = "stack-secret", value_name = "NAME=FILE", value_parser = parse_stack_secret)]
    pub stack_secrets: Vec<(String, PathBuf)>,
    /// Where the node's backups go, over its image's repository: a path
    /// on the node or a restic repository (s3:http://host:9000/bucket,
    /// sftp:user@host:/path); credentials go in --stack-secret, never here.
    #[arg(long, value_name = "REPOSITORY")]
    pub backup_repository: Option<String>,
}

impl SeedArgs {
    /// The seed these flags describe (flags over fleet values), or None
    /// when no seed value was given.
    pub fn seed(&self) -> Result<Option<Seed>> {
        SeedRequest {
            node: self.node.clone(),
            fleet: self.fleet.clone(),
            values: SeedOptions {
                hostname: self.hostname.clone(),
                authkey_file: self.authkey_file.clone(),
                ssh_keys: self.ssh_keys.clone(),
                tags: self.tags.clone(),
                stack_secret_files: self.stack_secrets.clone(),
                backup_repository: self.backup_repository.clone(),
            },
        }
        .resolve()
    }
}

/// `NAME=FILE` of `--stack-secret`.
fn parse_stack_secret(s: &str) -> Result<(String, PathBuf)> {
    match s.split_once('=') {
        Some((n, f)) if !n.is_empty() && !f.is_empty() => Ok((n.to_owned(), PathBuf::from(f))),
        _ => Err(anyhow::anyhow!(
            "`{s}` must be NAME=FILE, e.g. POSTGRES_PASSWORD=secrets/pg (the file holds the value)"
        )),
    }
}

//! `nodeforge serve`: network boot for a fleet. Machines are recognised
//! by MAC address (the fleet file); each gets its build's kernel, initrd
//! and root squashfs over HTTP, and its seed once. Optionally a TFTP
//! server hands the iPXE binary to firmware that only speaks TFTP.

pub mod event;
pub mod http;
pub mod nodes;
pub mod routes;
pub mod tftp;
pub mod verify;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, UdpSocket};

use crate::seed::Fleet;
pub use event::Event;
use nodes::NodeTable;
use routes::App;

/// Where events go (text on stderr or JSON lines on stdout for the
/// command, a buffer in tests).
pub type Log = Arc<dyn Fn(&Event) + Send + Sync>;

/// Where Debian's ipxe package puts undionly.kpxe and ipxe.efi.
pub const IPXE_DIR: &str = "/usr/lib/ipxe";

/// What `nodeforge serve` serves and where.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The fleet file: nodes by MAC address, their builds and seeds.
    pub nodes: PathBuf,
    /// Address for HTTP.
    pub listen: SocketAddr,
    /// Also serve the iPXE binaries over TFTP, on this address.
    pub tftp: Option<SocketAddr>,
    /// The directory TFTP serves (Debian's ipxe package: [`IPXE_DIR`]).
    pub tftp_root: PathBuf,
    /// Where the builds' netboot files are.
    pub artifacts: PathBuf,
    /// Serve only builds whose release this public key signed (the .pub of
    /// `nodeforge keys generate`), and only files that match it.
    pub release_key: Option<PathBuf>,
}

/// A running server (for tests and benches: on its own runtime thread).
pub struct Running {
    pub http: SocketAddr,
    pub tftp: Option<SocketAddr>,
    _runtime: tokio::runtime::Runtime,
}

/// A pushed build (`oci://…@sha256:…`) as `--artifacts`: fetched once into
/// the build cache (`artifacts/<digest>/`), which is then served.
fn local_artifacts(args: &ServeOptions) -> Result<PathBuf> {
    let Some(uri) = args.artifacts.to_str().filter(|s| s.starts_with("oci://")) else {
        return Ok(args.artifacts.clone());
    };
    let reference = crate::oci::artifact::parse_uri(uri)?;
    let digest = reference
        .digest
        .as_ref()
        .map(|d| d.hex().to_owned())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--artifacts {uri} is not pinned: give the oci://…@sha256:… that push printed"
            )
        })?;
    let dir = crate::build::default_cache_dir()
        .join("artifacts")
        .join(digest);
    let client = crate::oci::client::Client::new()?
        .with_credentials(crate::oci::auth::Credentials::load(None)?);
    crate::oci::artifact::pull_build(&client, uri, &dir)
        .with_context(|| format!("fetching {uri} into {}", dir.display()))?;
    Ok(dir)
}

/// Checks the fleet and the builds it names, binds the sockets.
pub fn start(args: &ServeOptions, log: Log) -> Result<Running> {
    let artifacts = local_artifacts(args)?;
    let args = &ServeOptions {
        artifacts,
        ..args.clone()
    };
    let fleet = Fleet::load(&args.nodes)?;
    let nodes = NodeTable::from_fleet(&fleet)?;
    for name in nodes.artifacts() {
        let files = crate::build::netboot::NetbootFiles::of(name);
        for f in [&files.kernel, &files.initrd, &files.squashfs, &files.script] {
            let p = args.artifacts.join(f);
            if !p.is_file() {
                anyhow::bail!(
                    "{} is missing: build the profile named `{name}` with `nodeforge build -o {} \
                     --format netboot PROFILE`",
                    p.display(),
                    args.artifacts.display()
                );
            }
        }
    }
    let releases = match &args.release_key {
        Some(key) => {
            let key = crate::release::load_public_key(key)?;
            Some(verify::Releases::verify(
                &key,
                &args.artifacts,
                &nodes.served_files(),
            )?)
        }
        None => None,
    };
    let app = Arc::new(App::new(nodes, args.artifacts.clone(), releases));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let listener = runtime
        .block_on(TcpListener::bind(args.listen))
        .with_context(|| format!("listening on {} for HTTP", args.listen))?;
    let http_addr = listener.local_addr()?;
    let tftp_sock = match args.tftp {
        Some(addr) => Some(runtime.block_on(UdpSocket::bind(addr)).with_context(|| {
            format!("binding {addr} for TFTP (port 69 needs root or CAP_NET_BIND_SERVICE)")
        })?),
        None => None,
    };
    let tftp_addr = tftp_sock.as_ref().map(UdpSocket::local_addr).transpose()?;
    // Said before the servers run, so before any request.
    log(&Event::Listening {
        http: http_addr,
        tftp: tftp_addr,
        tftp_root: tftp_addr.map(|_| args.tftp_root.display().to_string()),
    });
    if let Some(sock) = tftp_sock {
        let (root, log) = (args.tftp_root.clone(), log.clone());
        runtime.spawn(async move {
            if let Err(e) = tftp::serve(sock, root, log.clone()).await {
                log(&Event::Stopped {
                    server: "tftp".into(),
                    error: e.to_string(),
                });
            }
        });
    }
    let http_log = log.clone();
    runtime.spawn(async move {
        if let Err(e) = http::serve(listener, app, http_log.clone()).await {
            http_log(&Event::Stopped {
                server: "http".into(),
                error: e.to_string(),
            });
        }
    });
    Ok(Running {
        http: http_addr,
        tftp: tftp_addr,
        _runtime: runtime,
    })
}

/// `nodeforge serve`: runs until killed. Events go to stderr as text, or
/// to stdout as JSON lines with `json`.
pub fn run(args: &ServeOptions, json: bool) -> Result<()> {
    let log: Log = if json {
        Arc::new(|e: &Event| {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", e.json_line());
            let _ = out.flush();
        })
    } else {
        Arc::new(|e: &Event| eprintln!("{e}"))
    };
    let _running = start(args, log)?;
    loop {
        std::thread::park();
    }
}

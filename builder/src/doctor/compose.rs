//! trixie's docker-compose (v2) on the host, for validating the roles'
//! compose files without an engine: bookworm's package is the old Python
//! compose. Fetched with a private apt configuration, so the host's own
//! sources and package database stay as they are.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

use crate::exec::Cmd;
use crate::fsutil;

/// Where the tests look for it.
pub const COMPOSE_BIN: &str = "/usr/local/lib/nodeforge/docker-compose";

/// The binary's path inside trixie's docker-compose package.
const IN_PACKAGE: &str = "usr/libexec/docker/cli-plugins/docker-compose";

const TRIXIE_SOURCES: &str = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\n\
Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";

/// Downloads trixie's docker-compose package and installs its binary at
/// [`COMPOSE_BIN`].
pub fn install() -> Result<()> {
    let work = tempfile::tempdir().context("creating a scratch directory for docker-compose")?;
    let w = work.path();
    for d in ["state/lists/partial", "cache/archives/partial", "deb"] {
        let dir = w.join(d);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let sources = w.join("trixie.sources");
    fs::write(&sources, TRIXIE_SOURCES)
        .with_context(|| format!("writing {}", sources.display()))?;
    let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
    let apt = |what: &[&str]| {
        let mut cmd = Cmd::new("apt-get")
            .args(["-o", "Dir::Etc::SourceList=/dev/null"])
            .arg("-o")
            .arg(opt("Dir::Etc::SourceParts", w))
            .arg("-o")
            .arg(opt("Dir::State", &w.join("state")))
            .args(["-o", "Dir::State::status=/dev/null"])
            .arg("-o")
            .arg(opt("Dir::Cache", &w.join("cache")))
            .arg("-o")
            .arg(format!(
                "APT::Architecture={}",
                crate::build::host_arch().debian()
            ))
            .args(["-o", "APT::Sandbox::User=root"])
            .args(what)
            .current_dir(w.join("deb"));
        if what == ["update"] {
            cmd = cmd.inherit_output();
        }
        cmd.run()
    };
    apt(&["update"]).context("reading trixie's package lists (for docker-compose)")?;
    apt(&["download", "docker-compose"]).context("downloading trixie's docker-compose")?;
    let debs = w.join("deb");
    let deb = fs::read_dir(&debs)
        .with_context(|| {
            format!(
                "listing the downloaded docker-compose package in {}",
                debs.display()
            )
        })?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no docker-compose .deb")?;
    let root = w.join("root");
    Cmd::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .run()
        .with_context(|| format!("unpacking {}", deb.display()))?;
    let bin = fs::read(root.join(IN_PACKAGE))
        .with_context(|| format!("reading {IN_PACKAGE} from {}", deb.display()))?;
    let target = Path::new(COMPOSE_BIN);
    let parent = target.parent().expect("COMPOSE_BIN has a directory");
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    fsutil::atomic_write(target, &bin)?;
    fs::set_permissions(target, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {COMPOSE_BIN} executable"))?;
    Cmd::new(COMPOSE_BIN)
        .arg("version")
        .run()
        .with_context(|| format!("running the installed {COMPOSE_BIN}"))?;
    Ok(())
}

//! Shared pieces of the boot tests: images built once per test process
//! with one shared cache, QEMU guests run one at a time (2 cores), and
//! partitions copied out of images for outside tools.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

use anyhow::{bail, Context, Result};
use nodeforge::build::{self, BuildOptions, BuildResult, Output};
use nodeforge::plan::Plan;

pub mod backup;
pub mod control;
pub mod debian_images;
pub mod real_size;
pub mod ssh;
pub mod stacks;
pub mod standins;
pub mod static_http;
pub mod test_apt;
pub mod web_stack;
pub mod webhook;

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// One cache for every build of a test run ($NODEFORGE_CACHE_DIR, or
/// target/nodeforge-cache), so the base rootfs is bootstrapped once.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("NODEFORGE_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/nodeforge-cache"))
}

/// Where a guest's serial console is kept, so a failure can be read whole.
pub fn console_log(name: &str) -> PathBuf {
    let dir = workspace_root().join("target/qemu-tests/logs");
    std::fs::create_dir_all(&dir).expect("creating the console log directory");
    dir.join(format!("{name}.log"))
}

pub fn output_dir(name: &str) -> PathBuf {
    workspace_root().join("target/qemu-tests").join(name)
}

/// Output directories this test process built into. A full test run
/// builds a dozen images of 0.4 to 0.9 GB each; CI machines may have only
/// a few GB free, so each process removes its own when it exits
/// (NODEFORGE_KEEP_TEST_IMAGES=1 keeps them for inspection).
static BUILT_OUTPUTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" {
    fn atexit(callback: extern "C" fn()) -> std::os::raw::c_int;
}

extern "C" fn remove_built_outputs() {
    if std::env::var_os("NODEFORGE_KEEP_TEST_IMAGES").is_some() {
        return;
    }
    let dirs = BUILT_OUTPUTS.lock().unwrap_or_else(|e| e.into_inner());
    for dir in dirs.iter() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn remove_at_exit(dir: PathBuf) {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers a plain function with the C runtime; it runs once
    // at process exit, after the tests have finished.
    REGISTERED.call_once(|| unsafe {
        atexit(remove_built_outputs);
    });
    BUILT_OUTPUTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(dir);
}

/// Boot tests need root for the build (mmdebstrap) and fail loudly
/// without it rather than pass having tested nothing.
pub fn require_root() {
    assert!(
        nix_geteuid() == 0,
        "qemu-tests build real images and need root: run the test suite as root (see README)"
    );
}

fn nix_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { geteuid() }
}

extern "C" {
    fn geteuid() -> u32;
}

/// One cell per profile: a build holds only its own, so two profiles can
/// build side by side (the cache's locks keep shared entries whole).
type BuildCell = std::sync::Arc<OnceLock<BuildResult>>;
static BUILDS: OnceLock<Mutex<HashMap<PathBuf, BuildCell>>> = OnceLock::new();

/// Builds a profile (path relative to the workspace) once per process;
/// later callers get the same result.
pub fn build_profile(profile: &str) -> BuildResult {
    require_root();
    let path = workspace_root().join(profile);
    let cell = BUILDS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(path.clone())
        .or_default()
        .clone();
    cell.get_or_init(|| build_profile_into(&path, None)).clone()
}

/// Builds the profile at `path` (anywhere) into `out`, or into its name's
/// output directory; signed with the test release key.
pub fn build_profile_into(path: &Path, out: Option<&Path>) -> BuildResult {
    require_root();
    test_apt::ensure().unwrap_or_else(|e| panic!("{e:#}"));
    let shown = path.display();
    let plan = Plan::load(path).unwrap_or_else(|e| panic!("planning {shown}: {e:#}"));
    let output_dir = out.map_or_else(|| output_dir(&plan.profile.name), Path::to_path_buf);
    remove_at_exit(output_dir.clone());
    let opts = BuildOptions {
        output_dir,
        cache_dir: cache_dir(),
        output: Output::Human,
        no_cache: false,
        agent: None,
        offline: false,
        remote_cache: Default::default(),
        signing_key: Some(release_keys().private.clone()),
    };
    build::build(&plan, &opts).unwrap_or_else(|e| panic!("building {shown}: {e:#}"))
}

/// The release key pair every test build is signed with, made once per
/// test process (`nodeforge keys generate`'s code) in a directory removed
/// at its end: no private key is kept in the repository.
pub struct ReleaseKeys {
    pub private: PathBuf,
    pub public: PathBuf,
    _dir: tempfile::TempDir,
}

pub fn release_keys() -> &'static ReleaseKeys {
    static KEYS: OnceLock<ReleaseKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a directory for the test release key");
        let (private, public) = nodeforge::release::generate_keys(dir.path(), "release")
            .unwrap_or_else(|e| panic!("{e:#}"));
        ReleaseKeys {
            private,
            public,
            _dir: dir,
        }
    })
}

static VM_LOCK: Mutex<()> = Mutex::new(());

/// Held while a guest runs: two TCG guests on two cores would each take
/// twice as long and time out.
pub fn vm_slot() -> MutexGuard<'static, ()> {
    VM_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Copies bytes `offset..offset+size` of `image` into a new sparse file.
pub fn extract(image: &Path, offset: u64, size: u64, dest: &Path) -> Result<()> {
    let status = Command::new("dd")
        .arg(format!("if={}", image.display()))
        .arg(format!("of={}", dest.display()))
        .args([
            "bs=4M",
            "iflag=skip_bytes,count_bytes",
            "conv=sparse",
            "status=none",
        ])
        .arg(format!("skip={offset}"))
        .arg(format!("count={size}"))
        .status()
        .context("running dd")?;
    if !status.success() {
        bail!("dd copying {} failed", image.display());
    }
    Ok(())
}

/// Runs a checking tool; returns (success, combined output).
pub fn run_check(program: &str, args: &[&str], target: &Path) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .arg(target)
        .output()
        .unwrap_or_else(|e| {
            panic!("running {program} (install it: nodeforge doctor --install): {e}")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The value after `=== report-NAME ` on the console of a guest running
/// the boot-report overlay (the last one, for a disk booted twice).
pub fn report_value(console: &str, name: &str) -> Option<String> {
    let marker = format!("=== report-{name} ");
    console
        .lines()
        .filter_map(|l| {
            l.split_once(&marker)
                .map(|(_, v)| v.trim_end_matches('\r').to_owned())
        })
        .next_back()
}

/// Copies an image to a new sparse file (guests that write to their disk
/// get their own copy).
pub fn copy_image(image: &Path, dest: &Path) {
    nodeforge::fsutil::sparse_copy(image, dest)
        .unwrap_or_else(|e| panic!("copying {}: {e:#}", image.display()));
}

/// Does `needle` occur anywhere in the file? Reads it in overlapping
/// chunks so a match across a chunk boundary is found too.
pub fn file_contains(path: &Path, needle: &[u8]) -> bool {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut buf = vec![0u8; 8 << 20];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = f.read(&mut buf).expect("reading the image");
        if n == 0 {
            return false;
        }
        let mut window = std::mem::take(&mut carry);
        window.extend_from_slice(&buf[..n]);
        if window.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        carry = window[window.len().saturating_sub(needle.len() - 1)..].to_vec();
    }
}

/// Names of the packages a build's manifest lists as installed.
pub fn manifest_packages(manifest: &Path) -> Vec<String> {
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(manifest).unwrap_or_else(|e| panic!("reading {}: {e}", manifest.display())),
    )
    .expect("the manifest is JSON");
    m["packages"]
        .as_array()
        .expect("the manifest lists packages")
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Fails naming each of `wanted` that the build's manifest does not list
/// as installed.
pub fn assert_manifest_lists(manifest: &Path, wanted: &[&str]) {
    let names = manifest_packages(manifest);
    let missing: Vec<&&str> = wanted
        .iter()
        .filter(|w| !names.iter().any(|n| n == *w))
        .collect();
    assert!(
        missing.is_empty(),
        "{}: {missing:?} not in the manifest's package list",
        manifest.display()
    );
}

/// Boots `image` (changes kept) with `disks` attached until the guest
/// prints its report and powers off; the console.
pub fn boot_until_report(
    image: &Path,
    disks: &[nodeforge::boot::ExtraDisk],
    log_name: &str,
    timeout: std::time::Duration,
) -> String {
    let mut vm = nodeforge::boot::Vm::start(&nodeforge::boot::VmOptions {
        persist: true,
        log: Some(console_log(log_name)),
        extra_disks: disks.to_vec(),
        ..nodeforge::boot::VmOptions::new(image)
    })
    .expect("starting QEMU");
    if let Err(e) = vm.wait_for("=== report-end", timeout) {
        panic!("no report from {}: {e}", image.display());
    }
    vm.wait_exit(std::time::Duration::from_secs(120))
        .expect("guest powers off after its report");
    vm.console()
}

/// What the test-status overlay's unit prints once first boot ends.
pub const STATUS_MARKER: &str = "NODEFORGE-TEST-STATUS {";

/// The status.json the test-status unit printed on the console.
pub fn console_status(console: &str) -> serde_json::Value {
    let line = console
        .lines()
        .find_map(|l| l.split_once("NODEFORGE-TEST-STATUS ").map(|(_, j)| j))
        .expect("status line on the console");
    serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("status.json from the console ({e}): {line}"))
}

//! `nodeforge boot`: an image booted in QEMU with its serial console in a
//! log, watched for a line of text.
//!
//! KVM is tried first when /dev/kvm exists, but on some hosts it is there
//! and broken (QEMU aborts, or the guest stops after "KVM internal error"),
//! so a short trial decides and TCG is the fallback.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::build::host_arch;
use crate::exec::tail_lines;

mod lan;
mod machine;
mod netboot;
pub use lan::{Lan, LanPort};
pub use machine::{arch_of, image_arch, inspect, virt_append, BootSpec};
pub use netboot::NetbootVmOptions;

/// How long a KVM guest may stay silent on the serial console before KVM
/// is judged broken on this host.
const KVM_TRIAL: Duration = Duration::from_secs(20);
const KVM_FAILURES: [&str; 3] = ["KVM internal error", "failed to set MSR", "kvm run failed"];
const PANIC_MARKERS: [&str; 2] = ["Kernel panic - not syncing", "end Kernel panic"];

static KVM_BROKEN: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM when a trial shows it works, else TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone)]
pub struct VmOptions {
    pub image: PathBuf,
    pub accel: Accel,
    pub memory_mb: u32,
    pub cpus: u32,
    /// Forward host 127.0.0.1:port to the guest's port 22.
    pub ssh_port: Option<u16>,
    /// More host→guest TCP forwards.
    pub forwards: Vec<(u16, u16)>,
    /// Write changes into the image (default: a throwaway overlay).
    pub persist: bool,
    /// Serial console log; a temporary file when unset.
    pub log: Option<PathBuf>,
    /// More raw disks, attached as virtio disks after the image (always
    /// written through, so a test can inspect them afterwards).
    pub extra_disks: Vec<ExtraDisk>,
    /// The SMBIOS system UUID the firmware reports (QEMU's `-uuid`);
    /// another value makes the same disk look like another machine.
    pub machine_uuid: Option<String>,
    /// The NIC's MAC address (QEMU's default when unset).
    pub mac: Option<String>,
    /// More NICs, each on a virtual LAN shared with other guests
    /// ([`Lan`]), after the user-networking one.
    pub lan: Vec<LanPort>,
}

/// A raw disk file for the guest, with the serial number it reports
/// (seen in /dev/disk/by-id/virtio-SERIAL).
#[derive(Debug, Clone)]
pub struct ExtraDisk {
    pub path: PathBuf,
    pub serial: String,
}

impl VmOptions {
    pub fn new(image: impl Into<PathBuf>) -> Self {
        VmOptions {
            image: image.into(),
            accel: Accel::Auto,
            memory_mb: 1024,
            cpus: 2,
            ssh_port: None,
            forwards: Vec::new(),
            persist: false,
            log: None,
            extra_disks: Vec::new(),
            machine_uuid: None,
            mac: None,
            lan: Vec::new(),
        }
    }
}

/// A running guest.
pub struct Vm {
    child: Child,
    pub log: PathBuf,
    stderr_log: PathBuf,
    pub accel: Accel,
    pub started: Instant,
    _tmp: tempfile::TempDir,
}

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error(
        "timed out after {secs}s waiting for {expect:?} on the serial console; last lines:\n{tail}"
    )]
    Timeout {
        secs: u64,
        expect: String,
        tail: String,
    },
    #[error("kernel panic while waiting for {expect:?}; last lines:\n{tail}")]
    Panic { expect: String, tail: String },
    #[error(
        "QEMU exited ({status}) before {expect:?} appeared; QEMU said:\n{stderr}\nconsole:\n{tail}"
    )]
    Exited {
        status: String,
        expect: String,
        stderr: String,
        tail: String,
    },
    #[error("KVM does not work on this host: {0}")]
    KvmBroken(String),
    #[error(transparent)]
    Io(#[from] anyhow::Error),
}

impl Vm {
    /// Starts the image; with `Accel::Auto`, KVM is tried and abandoned for
    /// TCG if it fails its trial.
    pub fn start(opts: &VmOptions) -> Result<Vm> {
        // KVM runs guests of the host's architecture only.
        let native = arch_of(&opts.image)? == host_arch();
        let try_kvm = match opts.accel {
            Accel::Tcg => false,
            Accel::Kvm => true,
            Accel::Auto => {
                native && Path::new("/dev/kvm").exists() && !KVM_BROKEN.load(Ordering::Relaxed)
            }
        };
        if try_kvm {
            let mut vm = Vm::spawn(opts, Accel::Kvm)?;
            match vm.kvm_trial() {
                Ok(()) => return Ok(vm),
                Err(why) if opts.accel == Accel::Auto => {
                    KVM_BROKEN.store(true, Ordering::Relaxed);
                    vm.kill();
                    eprintln!("nodeforge: KVM failed its trial ({why}); using TCG");
                }
                Err(why) => {
                    vm.kill();
                    bail!("KVM does not work on this host: {why}");
                }
            }
        }
        Vm::spawn(opts, Accel::Tcg)
    }

    fn spawn(opts: &VmOptions, accel: Accel) -> Result<Vm> {
        let tmp = tempfile::tempdir().context("creating a temporary directory for QEMU")?;
        let spec = inspect(&opts.image, tmp.path())?;
        let log = fresh_log(opts.log.clone(), tmp.path())?;
        let args = machine::qemu_args(opts, &spec, accel, &log, tmp.path())?;
        Vm::launch(machine::qemu_program(spec.arch()), &args, log, accel, tmp)
    }

    /// Starts QEMU with `args`; its stderr is kept in `tmp`.
    fn launch(
        program: &str,
        args: &[String],
        log: PathBuf,
        accel: Accel,
        tmp: tempfile::TempDir,
    ) -> Result<Vm> {
        let stderr_log = tmp.path().join("qemu.stderr");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                File::create(&stderr_log)
                    .with_context(|| format!("creating {}", stderr_log.display()))?,
            )
            .spawn()
            .with_context(|| {
                format!("starting {program} (install it with `nodeforge doctor --install`)")
            })?;
        Ok(Vm {
            child,
            log,
            stderr_log,
            accel,
            started: Instant::now(),
            _tmp: tmp,
        })
    }

    /// Whether the guest reaches its console under KVM; the error says
    /// what went wrong instead.
    fn kvm_trial(&mut self) -> Result<()> {
        let deadline = Instant::now() + KVM_TRIAL;
        while Instant::now() < deadline {
            if let Some(why) = self.kvm_failure() {
                bail!(why);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("QEMU exited ({status}): {}", self.stderr_text());
            }
            if fs::metadata(&self.log)
                .map(|m| m.len() > 0)
                .unwrap_or(false)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("no console output in {}s", KVM_TRIAL.as_secs())
    }

    fn kvm_failure(&self) -> Option<String> {
        let err = self.stderr_text();
        KVM_FAILURES
            .iter()
            .any(|m| err.contains(m))
            .then(|| tail_lines(&err, 3))
    }

    fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Time since QEMU was started (under TCG, after KVM's trial).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn console(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until `expect` appears on the console (counting from the
    /// start of the log), the kernel panics, QEMU exits, or time runs out.
    pub fn wait_for(
        &mut self,
        expect: &str,
        timeout: Duration,
    ) -> std::result::Result<Duration, WaitError> {
        let deadline = Instant::now() + timeout;
        loop {
            let console = self.console();
            if console.contains(expect) {
                return Ok(self.started.elapsed());
            }
            if PANIC_MARKERS.iter().any(|m| console.contains(m)) {
                return Err(WaitError::Panic {
                    expect: expect.into(),
                    tail: tail_lines(&console, 30),
                });
            }
            if self.accel == Accel::Kvm {
                if let Some(why) = self.kvm_failure() {
                    KVM_BROKEN.store(true, Ordering::Relaxed);
                    return Err(WaitError::KvmBroken(why));
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // The guest may have printed the text just before it exited.
                let console = self.console();
                if console.contains(expect) {
                    return Ok(self.started.elapsed());
                }
                return Err(WaitError::Exited {
                    status: status.to_string(),
                    expect: expect.into(),
                    stderr: tail_lines(&self.stderr_text(), 10),
                    tail: tail_lines(&console, 30),
                });
            }
            if Instant::now() >= deadline {
                return Err(WaitError::Timeout {
                    secs: timeout.as_secs(),
                    expect: expect.into(),
                    tail: tail_lines(&console, 30),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits for QEMU to exit by itself (the guest powered off).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!(
            "the guest did not power off within {}s (console: {})",
            timeout.as_secs(),
            self.log.display()
        )
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An empty console log: `log`, or one in `tmp`.
fn fresh_log(log: Option<PathBuf>, tmp: &Path) -> Result<PathBuf> {
    let log = log.unwrap_or_else(|| tmp.join("console.log"));
    let _ = fs::remove_file(&log);
    File::create(&log).with_context(|| format!("creating console log {}", log.display()))?;
    Ok(log)
}

/// Starts the image, waits for `expect`, stops the guest. With `Auto`, a
/// KVM run that fails later than its trial is retried once under TCG.
pub fn boot(opts: &VmOptions, expect: &str, timeout: Duration) -> Result<(Accel, Duration)> {
    let mut vm = Vm::start(opts)?;
    match vm.wait_for(expect, timeout) {
        Ok(t) => Ok((vm.accel, t)),
        Err(WaitError::KvmBroken(why)) if opts.accel == Accel::Auto => {
            vm.kill();
            eprintln!("nodeforge: KVM failed during boot ({why}); retrying under TCG");
            let mut vm = Vm::spawn(opts, Accel::Tcg)?;
            let t = vm.wait_for(expect, timeout)?;
            Ok((Accel::Tcg, t))
        }
        Err(e) => Err(e.into()),
    }
}

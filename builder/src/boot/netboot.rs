//! A guest that boots from the network: legacy BIOS (SeaBIOS) with the
//! NIC's iPXE option ROM (Debian's ipxe-qemu), QEMU's user network
//! handing out the boot file URL by DHCP, optionally a blank local disk.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{Accel, Vm};

#[derive(Debug, Clone)]
pub struct NetbootVmOptions {
    /// What DHCP names as the boot file, e.g. http://10.0.2.2:8080/boot.ipxe
    /// (10.0.2.2 is the host in QEMU's user network).
    pub bootfile: String,
    /// The NIC's MAC address, the machine's identity to `nodeforge serve`.
    pub mac: String,
    pub memory_mb: u32,
    pub cpus: u32,
    /// Local disks (raw), written to in place.
    pub disks: Vec<PathBuf>,
    /// Serial console log; a temporary file when unset.
    pub log: Option<PathBuf>,
}

impl Vm {
    /// Starts an x86-64 guest that boots from the network (TCG: the
    /// netboot tests run where KVM may be broken, and a trial would cost a
    /// second boot).
    pub fn start_netboot(opts: &NetbootVmOptions) -> Result<Vm> {
        let tmp = tempfile::tempdir().context("creating a temporary directory for QEMU")?;
        let log = super::fresh_log(opts.log.clone(), tmp.path())?;
        let args = netboot_args(opts, &log)?;
        Vm::launch("qemu-system-x86_64", &args, log, Accel::Tcg, tmp)
    }
}

pub fn netboot_args(opts: &NetbootVmOptions, log: &Path) -> Result<Vec<String>> {
    let mut args = super::machine::common_args("pc,accel=tcg", "max", opts.cpus, opts.memory_mb);
    args.extend(["-boot".into(), "n".into()]);
    for disk in &opts.disks {
        let disk = disk
            .canonicalize()
            .with_context(|| format!("opening disk {}", disk.display()))?;
        args.extend([
            "-drive".into(),
            format!(
                "file={},format=raw,if=virtio,cache=unsafe",
                super::machine::qemu_escape(&disk)
            ),
        ]);
    }
    args.extend([
        "-netdev".into(),
        format!("user,id=net0,bootfile={}", opts.bootfile.replace(',', ",,")),
        "-device".into(),
        format!("virtio-net-pci,netdev=net0,mac={}", opts.mac),
        "-device".into(),
        "virtio-rng-pci".into(),
        "-chardev".into(),
        format!("file,id=console,path={}", super::machine::qemu_escape(log)),
        "-serial".into(),
        "chardev:console".into(),
    ]);
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_boots_from_the_network_with_its_mac_and_boot_url() {
        let opts = NetbootVmOptions {
            bootfile: "http://10.0.2.2:8080/boot.ipxe".into(),
            mac: "52:54:00:12:34:56".into(),
            memory_mb: 1536,
            cpus: 2,
            disks: Vec::new(),
            log: None,
        };
        let a = netboot_args(&opts, Path::new("/tmp/c.log"))
            .unwrap()
            .join(" ");
        assert!(a.contains("-boot n"), "{a}");
        assert!(
            a.contains("-netdev user,id=net0,bootfile=http://10.0.2.2:8080/boot.ipxe"),
            "{a}"
        );
        assert!(
            a.contains("virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56"),
            "{a}"
        );
        assert!(!a.contains("-drive"), "{a}");
        assert!(a.contains("-m 1536"), "{a}");
    }
}

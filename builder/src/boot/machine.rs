//! What QEMU is started with for an image: UEFI firmware for GPT images
//! (x86-64 q35 + OVMF, arm64 virt + AAVMF); for Raspberry Pi (MBR)
//! images, QEMU's arm64 `virt` machine booting the image's own kernel and
//! initrd, read from its FAT boot partition, with the root on virtio.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{Accel, LanPort, VmOptions};
use crate::build::rpi;
use crate::disk::{esp, gpt_table, layout, mbr};
use crate::profile::Arch;

/// How an image boots in QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootSpec {
    /// Firmware boots the disk (GPT, ESP).
    Uefi(Arch),
    /// QEMU loads the kernel and initrd itself (the Pi's firmware cannot
    /// be emulated on `virt`).
    Direct {
        arch: Arch,
        kernel: PathBuf,
        initrd: PathBuf,
        append: String,
    },
}

impl BootSpec {
    pub fn arch(&self) -> Arch {
        match self {
            BootSpec::Uefi(a) | BootSpec::Direct { arch: a, .. } => *a,
        }
    }
}

/// FAT partition types the Pi boot ROM accepts.
const FAT_TYPES: [u8; 3] = [0x0B, 0x0C, 0x0E];
/// virt's first serial port (PL011).
const VIRT_CONSOLE: &str = "console=ttyAMA0,115200";

/// The architecture an image runs on, without copying anything out: MBR
/// images are Raspberry Pi (arm64) images, GPT images say it by their root
/// partition type.
pub fn arch_of(image: &Path) -> Result<Arch> {
    match mbr::read(image)? {
        Some(_) => Ok(Arch::Arm64),
        None => image_arch(image),
    }
}

/// Looks at the image's partition table; for a Pi image, copies its
/// kernel and initrd into `tmp`.
pub fn inspect(image: &Path, tmp: &Path) -> Result<BootSpec> {
    match mbr::read(image)? {
        Some(parts) => pi_direct(image, &parts, tmp),
        None => Ok(BootSpec::Uefi(image_arch(image)?)),
    }
}

fn pi_direct(image: &Path, parts: &[mbr::MbrPartition], tmp: &Path) -> Result<BootSpec> {
    let boot = parts
        .iter()
        .find(|p| FAT_TYPES.contains(&p.mbr_type))
        .with_context(|| format!("{} has an MBR but no FAT boot partition", image.display()))?;
    let f = fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let read = |name: &str| {
        esp::read_file(&f, boot.offset, boot.size, name).with_context(|| {
            format!(
                "reading {name} from the boot partition of {}",
                image.display()
            )
        })
    };
    let cmdline = String::from_utf8_lossy(&read(rpi::CMDLINE_FILE)?).into_owned();
    let kernel = tmp.join("vmlinuz");
    let initrd = tmp.join("initrd.img");
    fs::write(&kernel, read(rpi::KERNEL_FILE)?)
        .with_context(|| format!("writing {}", kernel.display()))?;
    fs::write(&initrd, read(rpi::INITRD_FILE)?)
        .with_context(|| format!("writing {}", initrd.display()))?;
    Ok(BootSpec::Direct {
        arch: Arch::Arm64,
        kernel,
        initrd,
        append: virt_append(&cmdline),
    })
}

/// The Pi's command line with its consoles replaced by virt's serial
/// port: the Pi's UART names mean nothing on virt.
pub fn virt_append(cmdline_txt: &str) -> String {
    let mut opts: Vec<String> = rpi::parse_cmdline_txt(cmdline_txt)
        .into_iter()
        .filter(|o| !o.starts_with("console="))
        .collect();
    opts.push(VIRT_CONSOLE.into());
    opts.join(" ")
}

/// The architecture of a GPT disk image, from its root partition type.
pub fn image_arch(image: &Path) -> Result<Arch> {
    let parts = gpt_table::read(image)?;
    for arch in [Arch::Amd64, Arch::Arm64] {
        if parts.iter().any(|p| p.type_guid == layout::root_type(arch)) {
            return Ok(arch);
        }
    }
    bail!(
        "{} has no root partition of a type nodeforge knows",
        image.display()
    )
}

pub fn qemu_program(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "qemu-system-x86_64",
        Arch::Arm64 => "qemu-system-aarch64",
    }
}

/// UEFI firmware: code (read-only) and a variable store template. For
/// arm64 both are 64 MiB, the size of virt's flash banks.
fn firmware(arch: Arch) -> Result<(PathBuf, PathBuf)> {
    let candidates: &[(&str, &str)] = match arch {
        Arch::Amd64 => &[
            (
                "/usr/share/OVMF/OVMF_CODE_4M.fd",
                "/usr/share/OVMF/OVMF_VARS_4M.fd",
            ),
            (
                "/usr/share/OVMF/OVMF_CODE.fd",
                "/usr/share/OVMF/OVMF_VARS.fd",
            ),
        ],
        Arch::Arm64 => &[(
            "/usr/share/AAVMF/AAVMF_CODE.fd",
            "/usr/share/AAVMF/AAVMF_VARS.fd",
        )],
    };
    candidates
        .iter()
        .map(|(c, v)| (PathBuf::from(c), PathBuf::from(v)))
        .find(|(c, v)| c.is_file() && v.is_file())
        .with_context(|| {
            format!(
                "no UEFI firmware for {} (looked for {}): install it with `nodeforge doctor --install`",
                arch.debian(),
                candidates.iter().map(|c| c.0).collect::<Vec<_>>().join(", ")
            )
        })
}

/// virt's flash banks are 64 MiB each; QEMU refuses smaller images.
const VIRT_FLASH: u64 = 64 << 20;

pub fn qemu_args(
    opts: &VmOptions,
    spec: &BootSpec,
    accel: Accel,
    log: &Path,
    tmp: &Path,
) -> Result<Vec<String>> {
    let arch = spec.arch();
    let (machine, cpu) = match (arch, accel) {
        (Arch::Amd64, Accel::Kvm) => ("q35,accel=kvm", "host"),
        (Arch::Amd64, _) => ("q35,accel=tcg", "max"),
        // pauth-impdef: QEMU's own pointer-authentication hash, much
        // cheaper under TCG than the architected QARMA.
        (Arch::Arm64, Accel::Kvm) => ("virt,accel=kvm", "host"),
        (Arch::Arm64, _) => ("virt,accel=tcg", "max,pauth-impdef=on"),
    };
    let mut args = common_args(machine, cpu, opts.cpus, opts.memory_mb);
    match spec {
        BootSpec::Uefi(_) => {
            let (code, vars_template) = firmware(arch)?;
            let vars = tmp.join("vars.fd");
            fs::copy(&vars_template, &vars)
                .with_context(|| format!("copying {}", vars_template.display()))?;
            if arch == Arch::Arm64 {
                pad_flash(&vars)?;
            }
            args.extend([
                "-drive".into(),
                format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    qemu_escape(&code)
                ),
                "-drive".into(),
                format!("if=pflash,format=raw,unit=1,file={}", qemu_escape(&vars)),
            ]);
        }
        BootSpec::Direct {
            kernel,
            initrd,
            append,
            ..
        } => {
            args.extend([
                "-kernel".into(),
                kernel.to_string_lossy().into_owned(),
                "-initrd".into(),
                initrd.to_string_lossy().into_owned(),
                "-append".into(),
                append.clone(),
            ]);
        }
    }
    let mut fwd = String::new();
    if let Some(p) = opts.ssh_port {
        fwd.push_str(&format!(",hostfwd=tcp:127.0.0.1:{p}-:22"));
    }
    for (host, guest) in &opts.forwards {
        fwd.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
    }
    let image = opts
        .image
        .canonicalize()
        .with_context(|| format!("opening image {}", opts.image.display()))?;
    let mut drive = format!(
        "file={},format=raw,if=virtio,cache=unsafe",
        qemu_escape(&image)
    );
    if !opts.persist {
        drive.push_str(",snapshot=on");
    }
    args.extend(["-drive".into(), drive]);
    for (i, d) in opts.extra_disks.iter().enumerate() {
        let path = d
            .path
            .canonicalize()
            .with_context(|| format!("opening extra disk {}", d.path.display()))?;
        args.extend([
            "-drive".into(),
            format!(
                "file={},format=raw,if=none,id=extra{i},cache=unsafe",
                qemu_escape(&path)
            ),
            "-device".into(),
            format!(
                "virtio-blk-pci,drive=extra{i},serial={}",
                d.serial.replace(',', ",,")
            ),
        ]);
    }
    if let Some(uuid) = &opts.machine_uuid {
        args.extend(["-uuid".into(), uuid.clone()]);
    }
    let mut nic = "virtio-net-pci,netdev=net0".to_string();
    if let Some(mac) = &opts.mac {
        nic.push_str(&format!(",mac={mac}"));
    }
    args.extend([
        "-netdev".into(),
        format!("user,id=net0{fwd}"),
        "-device".into(),
        nic,
    ]);
    for (i, port) in opts.lan.iter().enumerate() {
        args.extend(lan_nic_args(&format!("lan{i}"), port));
    }
    args.extend([
        "-device".into(),
        "virtio-rng-pci".into(),
        "-chardev".into(),
        format!("file,id=console,path={}", qemu_escape(log)),
        "-serial".into(),
        "chardev:console".into(),
    ]);
    Ok(args)
}

/// QEMU's arguments for a second NIC on `port`, as device `id`.
fn lan_nic_args(id: &str, port: &LanPort) -> [String; 4] {
    [
        "-netdev".into(),
        format!(
            "dgram,id={id},local.type=unix,local.path={},remote.type=unix,remote.path={}",
            qemu_escape(&port.guest),
            qemu_escape(&port.hub)
        ),
        "-device".into(),
        format!("virtio-net-pci,netdev={id},mac={}", port.mac),
    ]
}

/// Machine, CPU, memory; no default devices, no display, and QEMU exits
/// when the guest reboots.
pub(super) fn common_args(machine: &str, cpu: &str, cpus: u32, memory_mb: u32) -> Vec<String> {
    [
        "-machine",
        machine,
        "-cpu",
        cpu,
        "-smp",
        &cpus.to_string(),
        "-m",
        &memory_mb.to_string(),
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Grows a variable store copy to virt's flash size (some distributions
/// ship it smaller than the bank).
fn pad_flash(path: &Path) -> Result<()> {
    let len = fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len < VIRT_FLASH {
        fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(VIRT_FLASH))
            .with_context(|| format!("padding {} to 64 MiB", path.display()))?;
    }
    Ok(())
}

/// QEMU option values use ',' as a separator; a literal comma is doubled.
pub(super) fn qemu_escape(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::scratch_file;

    #[test]
    fn mbr_images_are_arm64_and_gpt_images_say_their_arch() {
        use crate::disk::{test_image, DiskLayout, TableKind};
        for (table, arch) in [
            (TableKind::Mbr, Arch::Arm64),
            (TableKind::Gpt, Arch::Amd64),
            (TableKind::Gpt, Arch::Arm64),
        ] {
            let l = DiskLayout::fat_and_root(table, 700 << 20, 64 << 20, arch, "s").unwrap();
            let (_dir, path) = test_image::scratch_disk(&l);
            assert_eq!(arch_of(&path).unwrap(), arch, "{table:?}");
        }
    }

    #[test]
    fn pi_consoles_become_virts_serial_port() {
        let a = virt_append(
            "root=PARTUUID=0badcafe-02 rw console=tty1 console=ttyS1,115200 rootwait\n",
        );
        assert_eq!(
            a,
            "root=PARTUUID=0badcafe-02 rw rootwait console=ttyAMA0,115200"
        );
    }

    fn direct_spec(append: &str) -> BootSpec {
        BootSpec::Direct {
            arch: Arch::Arm64,
            kernel: "/k".into(),
            initrd: "/i".into(),
            append: append.into(),
        }
    }

    /// QEMU's command line, as one string, for `opts` booting a kernel
    /// directly with `append` under TCG.
    fn direct_command_line(opts: &VmOptions, append: &str, tmp: &Path) -> String {
        qemu_args(
            opts,
            &direct_spec(append),
            Accel::Tcg,
            &tmp.join("log"),
            tmp,
        )
        .unwrap()
        .join(" ")
    }

    #[test]
    fn direct_boot_passes_kernel_initrd_and_command_line() {
        let (tmp, img) = scratch_file("x.img", b"");
        let joined = direct_command_line(
            &VmOptions::new(&img),
            "root=x console=ttyAMA0,115200",
            tmp.path(),
        );
        assert!(joined.contains("-machine virt,accel=tcg"), "{joined}");
        assert!(
            joined.contains("-kernel /k -initrd /i -append root=x console=ttyAMA0,115200"),
            "{joined}"
        );
        assert!(!joined.contains("pflash"), "{joined}");
        assert!(joined.contains("if=virtio"), "{joined}");
    }

    #[test]
    fn extra_disks_follow_the_image_with_their_serials() {
        let (tmp, img) = scratch_file("x.img", b"");
        let data = tmp.path().join("data.img");
        fs::write(&data, b"").unwrap();
        let opts = VmOptions {
            extra_disks: vec![super::super::ExtraDisk {
                path: data.clone(),
                serial: "blank-1".into(),
            }],
            ..VmOptions::new(&img)
        };
        let joined = direct_command_line(&opts, "root=x", tmp.path());
        let root = joined.find("if=virtio").unwrap();
        let extra = joined
            .find(&format!(
                "file={},format=raw,if=none,id=extra0,cache=unsafe",
                data.display()
            ))
            .unwrap_or_else(|| panic!("{joined}"));
        assert!(root < extra, "{joined}");
        assert!(
            joined.contains("-device virtio-blk-pci,drive=extra0,serial=blank-1"),
            "{joined}"
        );
        assert!(!joined[extra..].contains("snapshot=on"), "{joined}");
    }

    #[test]
    fn another_machine_is_a_uuid_and_a_mac() {
        let (tmp, img) = scratch_file("x.img", b"");
        let opts = VmOptions {
            machine_uuid: Some("6b1c3e0a-2f4d-4e8a-9c1b-0d2e3f405162".into()),
            mac: Some("52:54:00:aa:bb:02".into()),
            ..VmOptions::new(&img)
        };
        let joined = direct_command_line(&opts, "root=x", tmp.path());
        assert!(
            joined.contains("-uuid 6b1c3e0a-2f4d-4e8a-9c1b-0d2e3f405162"),
            "{joined}"
        );
        assert!(
            joined.contains("virtio-net-pci,netdev=net0,mac=52:54:00:aa:bb:02"),
            "{joined}"
        );
        let plain = direct_command_line(&VmOptions::new(&img), "root=x", tmp.path());
        assert!(
            !plain.contains("-uuid") && !plain.contains("mac="),
            "{plain}"
        );
    }

    /// A port on a virtual LAN is a second NIC after the user-networking
    /// one, on a dgram netdev between the guest's socket and the hub's.
    #[test]
    fn a_lan_port_is_a_second_nic() {
        let (tmp, img) = scratch_file("x.img", b"");
        let opts = VmOptions {
            lan: vec![LanPort {
                hub: tmp.path().join("hub.sock"),
                guest: tmp.path().join("a.sock"),
                mac: "52:54:00:74:73:0b".into(),
            }],
            ..VmOptions::new(&img)
        };
        let joined = direct_command_line(&opts, "root=x", tmp.path());
        let user = joined.find("netdev=net0").expect("the user NIC");
        let lan = joined
            .find("-netdev dgram,id=lan0,local.type=unix,local.path=")
            .unwrap_or_else(|| panic!("no LAN netdev: {joined}"));
        assert!(user < lan, "{joined}");
        assert!(joined.contains("hub.sock"), "{joined}");
        assert!(
            joined.contains("virtio-net-pci,netdev=lan0,mac=52:54:00:74:73:0b"),
            "{joined}"
        );
    }
}

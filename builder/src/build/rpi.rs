//! The Raspberry Pi boot partition's contents: the Pi firmware from
//! Debian's raspi-firmware, the board's device trees from the kernel
//! package, config.txt, cmdline.txt, the kernel and the initrd.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::disk::esp::Content;
use crate::profile::RpiFile;

/// Where raspi-firmware puts the files the boot ROM/EEPROM loads.
pub const FIRMWARE_DIR: &str = "usr/lib/raspi-firmware";
/// Names on the boot partition; config.txt points the firmware at them.
pub const KERNEL_FILE: &str = "vmlinuz";
pub const INITRD_FILE: &str = "initrd.img";
pub const CONFIG_FILE: &str = "config.txt";
pub const CMDLINE_FILE: &str = "cmdline.txt";

/// What the boot partition is made from.
pub struct BootInputs<'a> {
    pub rootfs: &'a Path,
    pub rpi: &'a RpiFile,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub kernel_version: &'a str,
    /// Kernel command line, root=PARTUUID=… first.
    pub cmdline: &'a [String],
    /// For the header comment of config.txt.
    pub hardware: &'a str,
    pub profile: &'a str,
}

/// The files of the boot partition, by their path on it.
pub fn boot_files(inp: &BootInputs) -> Result<Vec<(String, Content)>> {
    let mut files = Vec::new();
    let fw_dir = inp.rootfs.join(FIRMWARE_DIR);
    for name in &inp.rpi.firmware_files {
        let src = fw_dir.join(name);
        if !src.is_file() {
            bail!(
                "Pi firmware file {name} is not in the image's /{FIRMWARE_DIR}: add `raspi-firmware` \
                 (component non-free-firmware) to the hardware's packages, or fix [rpi] firmware_files"
            );
        }
        files.push((name.clone(), Content::File(src)));
    }
    let dtb_dir = inp.rootfs.join(format!(
        "usr/lib/linux-image-{}/broadcom",
        inp.kernel_version
    ));
    for name in &inp.rpi.device_trees {
        let src = dtb_dir.join(name);
        if !src.is_file() {
            bail!(
                "device tree {name} is not in the image's /usr/lib/linux-image-{}/broadcom/: \
                 this kernel does not support the board, or [rpi] device_trees has a typo",
                inp.kernel_version
            );
        }
        files.push((name.clone(), Content::File(src)));
    }
    files.push((
        CONFIG_FILE.into(),
        Content::Bytes(config_txt(inp.rpi, inp.hardware, inp.profile).into_bytes()),
    ));
    files.push((
        CMDLINE_FILE.into(),
        Content::Bytes(cmdline_txt(inp.cmdline).into_bytes()),
    ));
    files.push((KERNEL_FILE.into(), Content::File(inp.kernel.clone())));
    files.push((INITRD_FILE.into(), Content::File(inp.initrd.clone())));
    Ok(files)
}

/// config.txt: 64-bit mode, the mainline device tree names, the serial
/// console, and where the kernel, initrd and command line are.
pub fn config_txt(rpi: &RpiFile, hardware: &str, profile: &str) -> String {
    let mut s = format!(
        "# Written by nodeforge for hardware `{hardware}` (profile `{profile}`).\n\
         # https://www.raspberrypi.com/documentation/computers/config_txt.html\n\
         arm_64bit=1\n\
         # Debian's kernel is mainline: use mainline device tree names.\n\
         upstream_kernel=1\n\
         enable_uart=1\n\
         kernel={KERNEL_FILE}\n\
         initramfs {INITRD_FILE} followkernel\n\
         cmdline={CMDLINE_FILE}\n"
    );
    for line in &rpi.config {
        s.push_str(line);
        s.push('\n');
    }
    s
}

/// cmdline.txt: the firmware passes its one line to the kernel.
pub fn cmdline_txt(options: &[String]) -> String {
    format!("{}\n", options.join(" "))
}

/// The options of a cmdline.txt (all on its first line).
pub fn parse_cmdline_txt(text: &str) -> Vec<String> {
    text.lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpi() -> RpiFile {
        RpiFile {
            firmware_files: vec!["start4.elf".into(), "fixup4.dat".into()],
            device_trees: vec!["bcm2711-rpi-4-b.dtb".into()],
            config: vec!["dtparam=audio=off".into()],
        }
    }

    #[test]
    fn config_txt_boots_64_bit_with_our_kernel_initrd_and_cmdline() {
        let c = config_txt(&rpi(), "rpi4", "sentinel");
        let lines: Vec<&str> = c.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "arm_64bit=1",
                "upstream_kernel=1",
                "enable_uart=1",
                "kernel=vmlinuz",
                "initramfs initrd.img followkernel",
                "cmdline=cmdline.txt",
                "dtparam=audio=off",
            ]
        );
        assert!(c.starts_with("# Written by nodeforge for hardware `rpi4`"));
    }

    #[test]
    fn cmdline_txt_is_one_line_and_parses_back() {
        let opts: Vec<String> = ["root=PARTUUID=1234abcd-02", "rw", "console=ttyS1,115200"]
            .map(String::from)
            .to_vec();
        let text = cmdline_txt(&opts);
        assert_eq!(text, "root=PARTUUID=1234abcd-02 rw console=ttyS1,115200\n");
        assert_eq!(text.lines().count(), 1);
        assert_eq!(parse_cmdline_txt(&text), opts);
        assert!(parse_cmdline_txt("").is_empty());
    }

    #[test]
    fn missing_firmware_names_the_package() {
        let root = tempfile::tempdir().unwrap();
        let inp = BootInputs {
            rootfs: root.path(),
            rpi: &rpi(),
            kernel: root.path().join("k"),
            initrd: root.path().join("i"),
            kernel_version: "6.12.0-arm64",
            cmdline: &[],
            hardware: "rpi4",
            profile: "p",
        };
        let err = boot_files(&inp).err().unwrap().to_string();
        assert!(
            err.contains("start4.elf") && err.contains("raspi-firmware"),
            "{err}"
        );
        let fw = root.path().join(FIRMWARE_DIR);
        std::fs::create_dir_all(&fw).unwrap();
        std::fs::write(fw.join("start4.elf"), "x").unwrap();
        std::fs::write(fw.join("fixup4.dat"), "x").unwrap();
        let err = boot_files(&inp).err().unwrap().to_string();
        assert!(err.contains("bcm2711-rpi-4-b.dtb"), "{err}");
        let dtbs = root
            .path()
            .join("usr/lib/linux-image-6.12.0-arm64/broadcom");
        std::fs::create_dir_all(&dtbs).unwrap();
        std::fs::write(dtbs.join("bcm2711-rpi-4-b.dtb"), "d").unwrap();
        let names: Vec<String> = boot_files(&inp)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            [
                "start4.elf",
                "fixup4.dat",
                "bcm2711-rpi-4-b.dtb",
                "config.txt",
                "cmdline.txt",
                "vmlinuz",
                "initrd.img"
            ]
        );
    }
}

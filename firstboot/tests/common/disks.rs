//! The fake machine's data disks: sysfs entries, device files and the
//! signatures the storage step reads, and the effect of partitioning,
//! mkfs and mount on them.

use std::fs;
use std::path::PathBuf;

use nodeforge_firstboot::runner::{Cmd, CmdOutput};

use super::{output_fail, output_ok, patch, Machine};

/// Data disks: virtio disk `index` (1 = vdb) is 254:(16*index), its first
/// partition 254:(16*index+1).
impl Machine {
    fn disk_dir(&self, name: &str) -> PathBuf {
        self.path(&format!("/sys/devices/pci0/virtio-{name}/block/{name}"))
    }

    /// Adds a zeroed data disk of `mib` MiB with a serial number.
    pub fn add_disk(&self, name: &str, mib: u64, serial: &str) {
        let index = (name.as_bytes()[2] - b'a') as u64;
        let dir = self.disk_dir(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("size"), format!("{}\n", mib << 11)).unwrap();
        fs::write(dir.join("serial"), format!("{serial}\n")).unwrap();
        let sys = |p: &str| self.path(p);
        std::os::unix::fs::symlink(
            format!("../devices/pci0/virtio-{name}/block/{name}"),
            sys(&format!("/sys/block/{name}")),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            format!("../../devices/pci0/virtio-{name}/block/{name}"),
            sys(&format!("/sys/dev/block/254:{}", 16 * index)),
        )
        .unwrap();
        let f = fs::File::create(self.path(&format!("/dev/{name}"))).unwrap();
        f.set_len(mib << 20).unwrap();
        fs::create_dir_all(self.path("/dev/disk/by-id")).unwrap();
        std::os::unix::fs::symlink(
            format!("../../{name}"),
            self.path(&format!("/dev/disk/by-id/virtio-{serial}")),
        )
        .unwrap();
    }

    /// What a GPT with one partition looks like to the kernel and on disk.
    pub fn partition_disk(&self, name: &str) {
        let index = (name.as_bytes()[2] - b'a') as u64;
        let dev = self.path(&format!("/dev/{name}"));
        patch(&dev, 510, &[0x55, 0xAA]);
        patch(&dev, 512, b"EFI PART");
        let len = fs::metadata(&dev).unwrap().len();
        let part = format!("{name}1");
        let pdir = self.disk_dir(name).join(&part);
        fs::create_dir_all(&pdir).unwrap();
        fs::write(pdir.join("partition"), "1\n").unwrap();
        fs::write(pdir.join("start"), "2048\n").unwrap();
        let f = fs::File::create(self.path(&format!("/dev/{part}"))).unwrap();
        f.set_len(len.saturating_sub(2 << 20)).unwrap();
        std::os::unix::fs::symlink(
            format!("../../devices/pci0/virtio-{name}/block/{name}/{part}"),
            self.path(&format!("/sys/dev/block/254:{}", 16 * index + 1)),
        )
        .unwrap();
    }

    /// Writes an ext4 superblock signature with `label` on a device.
    pub fn put_ext4(&self, kernel_name: &str, label: &str) {
        let dev = self.path(&format!("/dev/{kernel_name}"));
        patch(&dev, 1080, &[0x53, 0xEF]);
        let mut l = [0u8; 16];
        l[..label.len()].copy_from_slice(label.as_bytes());
        patch(&dev, 1144, &l);
    }

    pub(super) fn data_sfdisk(&self, cmd: &Cmd) -> CmdOutput {
        let dev = &cmd.args[1];
        let name = dev.trim_start_matches("/dev/");
        assert!(
            cmd.stdin
                .as_deref()
                .is_some_and(|s| s.starts_with("label: gpt\n") && s.contains("name=")),
            "{cmd:?}"
        );
        self.partition_disk(name);
        self.world.borrow_mut().data_partitionings += 1;
        output_ok("")
    }

    pub(super) fn data_mkfs(&self, cmd: &Cmd) -> CmdOutput {
        let (label, dev) = (&cmd.args[2], &cmd.args[3]);
        self.put_ext4(dev.trim_start_matches("/dev/"), label);
        self.world.borrow_mut().mkfs += 1;
        output_ok("")
    }

    pub(super) fn data_mount(&self, cmd: &Cmd) -> CmdOutput {
        let mp = &cmd.args[0];
        let fstab = self.read("/etc/fstab");
        let Some(label) = fstab.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&mp.as_str())).then(|| f[0].trim_start_matches("LABEL=").to_string())
        }) else {
            return output_fail(1, &format!("mount: {mp}: can't find in /etc/fstab."));
        };
        // The partition whose ext4 carries the label.
        for entry in fs::read_dir(self.path("/dev")).unwrap() {
            let e = entry.unwrap();
            let n = e.file_name().to_string_lossy().into_owned();
            if !n.ends_with('1') || !n.starts_with("vd") {
                continue;
            }
            let mut head = vec![0u8; 1160];
            use std::io::Read;
            let _ = fs::File::open(e.path()).unwrap().read(&mut head).unwrap();
            if head[1144..1144 + label.len()] == *label.as_bytes() {
                let index = (n.as_bytes()[2] - b'a') as u64;
                let mut mi = self.read("/proc/self/mountinfo");
                mi.push_str(&format!(
                    "40 22 254:{} / {mp} rw,relatime - ext4 /dev/{n} rw\n",
                    16 * index + 1
                ));
                self.write("/proc/self/mountinfo", &mi);
                if self.world.borrow().mount_race {
                    return output_fail(
                        32,
                        &format!("mount: {mp}: /dev/{n} already mounted on {mp}."),
                    );
                }
                return output_ok("");
            }
        }
        output_fail(
            32,
            &format!("mount: {mp}: special device LABEL={label} does not exist."),
        )
    }
}

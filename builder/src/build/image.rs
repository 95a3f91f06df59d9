//! Steps `esp`, `root-fs` and `partition-table`: the disk image, written
//! into one sparse file under a temporary name.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::context::BuildContext;
use super::progress::StepOutcome;
use super::reproducible;
use super::rpi;
use crate::disk::esp::{self, Content};
use crate::disk::{gpt_table, mbr, PartitionKind, TableKind};
use crate::exec::Cmd;
use crate::fsutil;
use crate::profile::Firmware;

/// The image being written. Removed on drop unless it was committed, so a
/// failed build leaves nothing behind.
pub struct PartialImage {
    pub path: PathBuf,
    pub file: File,
    committed: bool,
}

impl PartialImage {
    fn create(final_path: &Path, size: u64) -> Result<Self> {
        let path = fsutil::partial_path(final_path);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        file.set_len(size)
            .with_context(|| format!("sizing {} to {size} bytes", path.display()))?;
        Ok(PartialImage {
            path,
            file,
            committed: false,
        })
    }

    /// Renames the finished image to `final_path`.
    pub fn commit(mut self, final_path: &Path) -> Result<()> {
        self.file
            .sync_all()
            .with_context(|| format!("syncing {}", self.path.display()))?;
        fsutil::commit_partial(&self.path, final_path)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PartialImage {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

pub fn image_path(ctx: &BuildContext) -> PathBuf {
    ctx.opts
        .output_dir
        .join(format!("{}.img", ctx.plan.profile.name))
}

/// Writes the firmware's FAT partition: the ESP on UEFI, the boot
/// partition on a Raspberry Pi.
pub fn write_boot_partition(ctx: &mut BuildContext) -> Result<StepOutcome> {
    let (kernel, initrd, version) = find_kernel(&ctx.rootfs)?;
    let p = &ctx.plan.profile;
    let root = ctx.plan.layout.partition(PartitionKind::Root);
    let mut options = vec![format!("root=PARTUUID={}", root.partuuid), "rw".to_string()];
    if ctx.plan.layout.has_slots() {
        // fstab has no line for / (it names no slot): its options go here.
        // A panic reboots, so a slot whose kernel panics spends its tries
        // and the other slot boots.
        options.push("rootflags=errors=remount-ro".into());
        options.push("panic=10".into());
    }
    options.extend(p.hardware.kernel_cmdline.iter().cloned());
    let (files, label) = match p.hardware.firmware {
        Firmware::Uefi => (uefi_files(ctx, kernel, initrd, &version, &options)?, "ESP"),
        Firmware::Rpi => {
            let rpi = p
                .hardware
                .rpi
                .as_ref()
                .context("firmware = \"rpi\" without an [rpi] table")?;
            let files = rpi::boot_files(&rpi::BootInputs {
                rootfs: &ctx.rootfs,
                rpi,
                kernel,
                initrd,
                kernel_version: &version,
                cmdline: &options,
                hardware: &p.hardware.name,
                profile: &p.name,
            })?;
            (files, "BOOT")
        }
    };
    let part = ctx.plan.layout.partition(PartitionKind::Esp).clone();
    let image = PartialImage::create(&image_path(ctx), ctx.plan.layout.size)?;
    let volume = esp::Volume {
        id: esp::volume_id_from(&part.fs_uuid),
        label,
        epoch: ctx.epoch,
    };
    esp::write(&image.file, part.offset, part.size, &volume, &files)
        .with_context(|| format!("writing the {label} partition to {}", image.path.display()))?;
    ctx.facts.insert("kernel".into(), version.into());
    ctx.image = Some(image);
    Ok(StepOutcome::Done)
}

/// systemd-boot as the removable-media loader, its entry, kernel, initrd.
fn uefi_files(
    ctx: &BuildContext,
    kernel: PathBuf,
    initrd: PathBuf,
    version: &str,
    options: &[String],
) -> Result<Vec<(String, Content)>> {
    let p = &ctx.plan.profile;
    let arch = p.hardware.arch;
    let sd_boot = ctx.target(&format!(
        "/usr/lib/systemd/boot/efi/{}",
        arch.systemd_boot_file()
    ));
    if !sd_boot.is_file() {
        bail!(
            "{} is missing from the image: add `systemd-boot-efi` to the hardware's packages",
            sd_boot
                .strip_prefix(&ctx.rootfs)
                .unwrap_or(&sd_boot)
                .display()
        );
    }
    let loader = |files: &mut Vec<(String, Content)>| {
        files.splice(
            0..0,
            [
                (
                    format!("EFI/BOOT/{}", arch.efi_boot_file()),
                    Content::File(sd_boot.clone()),
                ),
                (
                    format!("EFI/systemd/{}", arch.systemd_boot_file()),
                    Content::File(sd_boot.clone()),
                ),
            ],
        );
    };
    if ctx.plan.layout.has_slots() {
        // Slot A's entry, generation 1, uncounted: the image as flashed is
        // the known-good slot. No `default`: the highest version of the
        // shared sort key boots, and a counted entry out of tries sorts last.
        use nodeforge_firstboot::slots::{entry_file_name, esp_dir, Entry, Slot};
        let entry = Entry {
            slot: Slot::A,
            version: 1,
            title: format!("nodeforge {} ({}), slot a", p.name, p.role),
            options: options.join(" "),
        };
        let dir = esp_dir(Slot::A);
        let mut files = vec![
            (
                "loader/loader.conf".into(),
                Content::Bytes(b"timeout 0\neditor no\n".to_vec()),
            ),
            (
                format!("loader/entries/{}", entry_file_name(Slot::A, None)),
                Content::Bytes(entry.text().into_bytes()),
            ),
            (format!("{dir}/vmlinuz"), Content::File(kernel)),
            (format!("{dir}/initrd.img"), Content::File(initrd)),
            (
                nodeforge_firstboot::slots::version_file(Slot::A),
                Content::Bytes(format!("{}\n", ctx.image_key).into_bytes()),
            ),
        ];
        loader(&mut files);
        return Ok(files);
    }
    let entry = format!(
        "title   nodeforge {} ({})\nversion {version}\nlinux   /nodeforge/vmlinuz\ninitrd  /nodeforge/initrd.img\noptions {}\n",
        p.name,
        p.role,
        options.join(" ")
    );
    let mut files = vec![
        (
            "loader/loader.conf".into(),
            Content::Bytes(b"default nodeforge.conf\ntimeout 0\neditor no\n".to_vec()),
        ),
        (
            "loader/entries/nodeforge.conf".into(),
            Content::Bytes(entry.into_bytes()),
        ),
        ("nodeforge/vmlinuz".into(), Content::File(kernel)),
        ("nodeforge/initrd.img".into(), Content::File(initrd)),
    ];
    loader(&mut files);
    Ok(files)
}

/// The newest kernel and its initrd in the target's /boot.
pub fn find_kernel(root: &Path) -> Result<(PathBuf, PathBuf, String)> {
    let version = kernel_version(root)?;
    let boot = root.join("boot");
    let initrd = boot.join(format!("initrd.img-{version}"));
    if !initrd.is_file() {
        bail!("kernel {version} has no initrd in /boot (is initramfs-tools installed?)");
    }
    Ok((boot.join(format!("vmlinuz-{version}")), initrd, version))
}

/// The newest kernel version in the target's /boot.
pub fn kernel_version(root: &Path) -> Result<String> {
    let boot = root.join("boot");
    nodeforge_firstboot::slots::newest_kernel(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .context(
            "the image has no kernel in /boot: add a kernel package (e.g. linux-image-amd64) to the hardware's packages",
        )
}

pub fn write_root_fs(ctx: &mut BuildContext) -> Result<StepOutcome> {
    let image = ctx
        .image
        .as_ref()
        .context("the image file was not created")?;
    let root = ctx.plan.layout.partition(PartitionKind::Root);
    // The tree's data lands in the image file: check both that the
    // partition can hold it and that the host's disk can.
    let tree = fsutil::tree_bytes(&ctx.rootfs)?;
    if tree + tree / 20 > root.size {
        bail!(
            "the root filesystem ({} MiB) cannot hold the image's {} MiB of files: \
             raise [disk] size in profile {}",
            root.size >> 20,
            tree >> 20,
            ctx.plan.profile.name
        );
    }
    let out_dir = image.path.parent().unwrap_or(Path::new("."));
    fsutil::require_free_space(out_dir, tree + tree / 10, "the root filesystem's data")?;
    mkfs_ext4("root", root, &ctx.rootfs, &image.path, ctx.epoch)
        .with_context(|| format!("writing the root filesystem into {}", image.path.display()))?;
    if let Some(state) = ctx.plan.layout.find(PartitionKind::State) {
        write_state_fs(ctx, &image.path, state)?;
    }
    Ok(StepOutcome::Done)
}

/// The state partition: ext4 with one empty directory per persistent path
/// (slots bind-mount them); slot B stays a hole until an update.
fn write_state_fs(
    ctx: &BuildContext,
    image: &Path,
    state: &crate::disk::PartitionSpec,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tree = ctx.work.path().join("state-tree");
    fsutil::create_dir_all(&tree)?;
    for (dir, _, mode) in nodeforge_firstboot::slots::PERSISTENT {
        let d = tree.join(dir);
        fsutil::create_dir_all(&d)?;
        fs::set_permissions(&d, fs::Permissions::from_mode(*mode))
            .with_context(|| format!("setting the mode of {}", d.display()))?;
    }
    mkfs_ext4("state", state, &tree, image, ctx.epoch)
        .with_context(|| format!("writing the state partition into {}", image.display()))?;
    Ok(())
}

/// `mkfs.ext4 -d TREE` into the partition `part` of `image`, labelled
/// `label`: its UUID and hash seed from the layout and, with an epoch,
/// every time in it, so the bytes depend on the inputs only.
fn mkfs_ext4(
    label: &str,
    part: &crate::disk::PartitionSpec,
    tree: &Path,
    image: &Path,
    epoch: Option<i64>,
) -> Result<()> {
    let mut cmd = reproducible::hermetic(Cmd::new("mkfs.ext4"))
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-L", label, "-U"])
        .arg(part.fs_uuid.to_string())
        .arg("-E")
        .arg(format!(
            "offset={},nodiscard,hash_seed={}",
            part.offset, part.fs_uuid
        ))
        .arg("-d")
        .arg(tree)
        .arg(image)
        .arg(format!("{}k", part.size / 1024));
    if let Some(epoch) = epoch {
        // Files the build wrote carry the build's time; clamp them.
        reproducible::clamp_mtimes(tree, epoch)?;
        cmd = cmd
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .env("E2FSPROGS_FAKE_TIME", epoch.to_string());
    }
    cmd.run()?;
    Ok(())
}

pub fn write_partition_table(ctx: &mut BuildContext) -> Result<StepOutcome> {
    let image = ctx
        .image
        .as_ref()
        .context("the image file was not created")?;
    match ctx.plan.layout.table {
        TableKind::Gpt => gpt_table::write(&image.file, &image.path, &ctx.plan.layout)?,
        TableKind::Mbr => mbr::write(&image.file, &image.path, &ctx.plan.layout)?,
    }
    Ok(StepOutcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_sort_numerically() {
        let root = tempfile::tempdir().unwrap();
        let boot = root.path().join("boot");
        fs::create_dir_all(&boot).unwrap();
        for v in ["6.12.10-amd64", "6.12.9-amd64", "6.1.0-amd64"] {
            fs::write(boot.join(format!("vmlinuz-{v}")), "k").unwrap();
        }
        assert_eq!(kernel_version(root.path()).unwrap(), "6.12.10-amd64");
    }
}

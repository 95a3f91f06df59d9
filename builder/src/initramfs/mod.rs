//! nodeforge's own initramfs, written on the build host: the target's
//! static busybox, the kernel modules that reach the root filesystem (and
//! their dependencies), and an /init that loads them, waits for the root
//! filesystem by its UUID, mounts it and switches to it. Nothing of the
//! target runs during the build, so a foreign-architecture image needs no
//! emulated initramfs generator.

pub mod cpio;
pub mod modules;
pub mod netboot;

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use uuid::Uuid;

use crate::exec::Cmd;
use cpio::CpioWriter;
use modules::ModuleIndex;

/// Where busybox-static puts its binary (before and after the /usr merge).
const BUSYBOX: [&str; 2] = ["usr/bin/busybox", "bin/busybox"];
/// The list of modules /init loads, in order.
const MODULE_LIST: &str = "etc/nodeforge-modules";
/// How long /init waits for the root filesystem to appear.
const ROOT_WAIT_SECS: u32 = 60;

/// What went into an initramfs, for the manifest.
#[derive(Debug, Clone)]
pub struct Built {
    pub bytes: Vec<u8>,
    pub modules: Vec<String>,
}

/// Builds the initramfs for kernel `version` of the system in `rootfs`.
/// Every entry carries `mtime` (the build's epoch; 0 when it has none).
pub fn build(
    rootfs: &Path,
    version: &str,
    wanted: &[String],
    root_uuid: Uuid,
    mtime: i64,
) -> Result<Built> {
    assemble(
        rootfs,
        version,
        wanted,
        &[],
        &init_script(root_uuid),
        &[],
        mtime,
    )
}

/// A file the initramfs carries besides busybox, the modules and /init.
pub struct Extra<'a> {
    pub path: &'a str,
    pub mode: u32,
    pub data: &'a [u8],
}

/// The cpio archive: busybox, the `wanted` modules (and those of
/// `optional` the kernel has) with their dependencies, `extra` files, and
/// `init` as /init.
fn assemble(
    rootfs: &Path,
    version: &str,
    wanted: &[String],
    optional: &[&str],
    init: &str,
    extra: &[Extra],
    mtime: i64,
) -> Result<Built> {
    let busybox = BUSYBOX
        .iter()
        .map(|p| rootfs.join(p))
        .find(|p| p.is_file())
        .context(
            "the image has no /usr/bin/busybox: add `busybox-static` to the hardware's packages \
             (nodeforge's initramfs runs it)",
        )?;
    let busybox = fs::read(&busybox).with_context(|| format!("reading {}", busybox.display()))?;
    let mod_dir = ["usr/lib/modules", "lib/modules"]
        .iter()
        .map(|d| rootfs.join(d).join(version))
        .find(|d| d.is_dir())
        .with_context(|| format!("the image has no /usr/lib/modules/{version}"))?;
    let read_index = |name: &str| {
        let p = mod_dir.join(name);
        fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    let index = ModuleIndex::parse(
        &read_index("modules.dep")?,
        &read_index("modules.builtin").unwrap_or_default(),
    );
    let mut all: Vec<String> = wanted.to_vec();
    all.extend(optional.iter().map(|m| m.to_string()));
    let order = match index.resolve(&all) {
        Err(missing) if missing.iter().all(|m| optional.contains(&m.as_str())) => {
            all.retain(|m| !missing.contains(m));
            index.resolve(&all)
        }
        other => other,
    };
    let order = order.map_err(|missing| {
        anyhow::anyhow!(
            "kernel {version} has no module {} (neither in modules.dep nor built in): fix the \
             hardware's initramfs_modules",
            missing.join(", ")
        )
    })?;

    // newc headers hold 32 bits of time.
    let mut w = CpioWriter::new(Vec::new(), mtime.clamp(0, u32::MAX.into()) as u32);
    for d in [
        "/",
        "/bin",
        "/sbin",
        "/dev",
        "/proc",
        "/sys",
        "/etc",
        "/newroot",
        "/lib",
        "/lib/modules",
    ] {
        w.dir(d, 0o755)?;
    }
    w.char_device("/dev/console", 0o600, 5, 1)?;
    w.file("/bin/busybox", 0o755, &busybox)?;
    w.symlink("/bin/sh", "busybox")?;
    // The kernel calls /sbin/modprobe itself for some requests.
    w.symlink("/sbin/modprobe", "../bin/busybox")?;
    let mut dirs = std::collections::BTreeSet::new();
    let mut list = String::new();
    for m in &order {
        let dest = uncompressed_name(m);
        for (i, _) in dest.match_indices('/') {
            if dirs.insert(dest[..i].to_owned()) {
                w.dir(&format!("/lib/modules/{}", &dest[..i]), 0o755)?;
            }
        }
        let data = read_module(&mod_dir.join(m))?;
        w.file(&format!("/lib/modules/{dest}"), 0o644, &data)?;
        list.push_str(&dest);
        list.push('\n');
    }
    w.file(&format!("/{MODULE_LIST}"), 0o644, list.as_bytes())?;
    for e in extra {
        w.file(e.path, e.mode, e.data)?;
    }
    w.file("/init", 0o755, init.as_bytes())?;
    Ok(Built {
        bytes: w.finish()?,
        modules: order.iter().map(|m| modules::module_name(m)).collect(),
    })
}

/// `x.ko.xz` → `x.ko`.
fn uncompressed_name(path: &str) -> String {
    match path.find(".ko") {
        Some(i) => format!("{}.ko", &path[..i]),
        None => path.to_owned(),
    }
}

/// A module file, decompressed: busybox's insmod hands the bytes to the
/// kernel as they are, and the kernel wants an ELF object.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko") {
        return fs::read(path).with_context(|| format!("reading {}", path.display()));
    } else if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        bail!(
            "{} is not a kernel module file nodeforge knows",
            path.display()
        );
    };
    let out = Cmd::new(tool)
        .args(["-d", "-c"])
        .arg(path)
        .run()
        .with_context(|| format!("decompressing kernel module {}", path.display()))?;
    Ok(out.stdout)
}

/// /init: busybox sh. A root filesystem that never appears ends in a
/// kernel panic (init exits), which boot watchers and people both see.
pub fn init_script(root_uuid: Uuid) -> String {
    format!(
        r#"#!/bin/sh
# nodeforge initramfs: load the drivers that reach the root filesystem,
# mount it and hand over to its init.
{prelude}root="UUID={root_uuid}"
tries=0
until dev=$(findfs "$root" 2>/dev/null); do
    tries=$((tries + 1))
    if [ "$tries" -gt {tries} ]; then
        echo "nodeforge-initramfs: root filesystem $root not found after {ROOT_WAIT_SECS} s; block devices:"
        cat /proc/partitions
        sleep 10
        exit 1
    fi
    sleep 0.2
done
if ! mount -t ext4 -o rw "$dev" /newroot; then
    echo "nodeforge-initramfs: cannot mount $dev ($root)"
    sleep 10
    exit 1
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init "$@"
"#,
        tries = ROOT_WAIT_SECS * 5,
        prelude = INIT_PRELUDE,
    )
}

/// The start of every /init: busybox's applets, the kernel's virtual
/// filesystems, the modules.
const INIT_PRELUDE: &str = r#"/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
while read -r m; do
    insmod "/lib/modules/$m" 2>/dev/null
done < /etc/nodeforge-modules
"#;

/// A stand-in image root for the tests, in a temporary directory: a
/// busybox, and the modules of `kernel` as `files` (path below
/// usr/lib/modules/KERNEL, contents).
#[cfg(test)]
fn fake_root(kernel: &str, files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let write = |rel: &str, contents: &[u8]| {
        let path = root.path().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, contents).unwrap();
    };
    write("usr/bin/busybox", b"\x7fELF busybox");
    for (rel, contents) in files {
        write(&format!("usr/lib/modules/{kernel}/{rel}"), contents);
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_module_names_lose_their_suffix() {
        assert_eq!(
            uncompressed_name("kernel/fs/ext4/ext4.ko.xz"),
            "kernel/fs/ext4/ext4.ko"
        );
        assert_eq!(uncompressed_name("a/b.ko"), "a/b.ko");
    }

    #[test]
    fn init_waits_for_the_root_by_uuid_and_switches_root() {
        let u = Uuid::from_u128(0x1234);
        let s = init_script(u);
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains(&format!("root=\"UUID={u}\"")));
        assert!(s.contains("exec switch_root /newroot /sbin/init"));
        assert!(s.contains("-gt 300 ]"));
    }

    #[test]
    fn initramfs_holds_busybox_modules_in_order_and_init() {
        let root = fake_root(
            "6.12.0-arm64",
            &[
                ("kernel/fs/ext4/ext4.ko", b"ext4 object"),
                ("kernel/fs/jbd2/jbd2.ko", b"jbd2 object"),
                (
                    "modules.dep",
                    b"kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko\nkernel/fs/jbd2/jbd2.ko:\n",
                ),
            ],
        );
        let r = root.path();
        let built = build(r, "6.12.0-arm64", &["ext4".into()], Uuid::from_u128(7), 0).unwrap();
        assert_eq!(built.modules, ["jbd2", "ext4"]);
        let text = String::from_utf8_lossy(&built.bytes);
        assert!(text.contains("kernel/fs/jbd2/jbd2.ko\nkernel/fs/ext4/ext4.ko\n"));
        assert!(text.contains("ext4 object") && text.contains("busybox"));
        let err = build(r, "6.12.0-arm64", &["nvme".into()], Uuid::nil(), 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no module nvme"), "{err}");
        fs::remove_file(r.join("usr/bin/busybox")).unwrap();
        let err = build(r, "6.12.0-arm64", &["ext4".into()], Uuid::nil(), 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("busybox-static"), "{err}");
    }
}

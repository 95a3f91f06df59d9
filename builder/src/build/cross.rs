//! mmdebstrap hooks that keep a foreign-architecture bootstrap fast.
//!
//! Under qemu-user every program a maintainer script starts costs tens to
//! hundreds of milliseconds, and a few packages start hundreds of them
//! (measured with dpkg.log timestamps for the arm64 Pi image on x86-64:
//! ca-certificates ~30 % of the bootstrap, one process per certificate;
//! the kernel's depmod ~15 %; update-initramfs minutes). Those commands
//! are diverted to /bin/true while packages install (dpkg-divert, so dpkg
//! itself keeps the real files under `.distrib`), the diversions are
//! removed at the end, and the same work is then done natively on the
//! host against the finished tree. Package scripts themselves still run
//! inside the target (chroot), so nothing touches the host's own files.

/// The programs whose work moves to the host, with the native command
/// that redoes it afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferred {
    /// Debian's initramfs generator; nodeforge writes the initramfs itself.
    UpdateInitramfs,
    /// Debian's initramfs generator, run once at the end: the kernel's
    /// postinst and initramfs-tools' trigger would each make the initrd
    /// (measured: 6.6 s each for the amd64 base, 30 % of the bootstrap).
    UpdateInitramfsOnce,
    /// Kernel module index; host depmod writes the same files.
    Depmod,
    /// /etc/ssl/certs; the target's own script runs with the host's shell
    /// and openssl.
    UpdateCaCertificates,
}

impl Deferred {
    fn path(self) -> &'static str {
        match self {
            Deferred::UpdateInitramfs | Deferred::UpdateInitramfsOnce => {
                "/usr/sbin/update-initramfs"
            }
            Deferred::Depmod => "/usr/sbin/depmod",
            Deferred::UpdateCaCertificates => "/usr/sbin/update-ca-certificates",
        }
    }

    /// Native shell that does the deferred work on the tree at "$1".
    fn redo(self) -> Option<&'static str> {
        match self {
            // nodeforge's initramfs step makes it.
            Deferred::UpdateInitramfs => None,
            // Runs the target's generator in the target, for every kernel.
            Deferred::UpdateInitramfsOnce => Some(
                "if ls \"$1\"/usr/lib/modules/*/modules.order >/dev/null 2>&1; then \
                 chroot \"$1\" update-initramfs -c -k all; fi",
            ),
            Deferred::Depmod => Some(
                "for d in \"$1\"/usr/lib/modules/*/; do \
                 [ -f \"$d/modules.order\" ] && depmod -b \"$1\" -a \"$(basename \"$d\")\"; \
                 done; true",
            ),
            // --sysroot makes the script write links with the root in
            // front; they are made absolute inside the image again. Hooks
            // in update.d are target programs: then run it in the chroot.
            Deferred::UpdateCaCertificates => Some(
                "if [ -e \"$1/usr/sbin/update-ca-certificates\" ]; then \
                 if [ -n \"$(ls -A \"$1/etc/ca-certificates/update.d\" 2>/dev/null)\" ]; then \
                 chroot \"$1\" update-ca-certificates; \
                 else sh \"$1/usr/sbin/update-ca-certificates\" --sysroot \"$1\" >/dev/null && \
                 find \"$1/etc/ssl/certs\" -type l | while read -r l; do \
                 t=$(readlink \"$l\"); case \"$t\" in \"$1\"/*) \
                 ln -sfn \"$(printf %s \"${t#\"$1\"}\" | sed 's|^/*|/|')\" \"$l\";; esac; \
                 done; fi; fi",
            ),
        }
    }
}

/// Hooks for one bootstrap: `--essential-hook`s (after the essential
/// packages, before the rest) and `--customize-hook`s (at the end).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    pub essential: Vec<String>,
    pub customize: Vec<String>,
}

/// openssh-server's postinst makes the host keys only where none exist:
/// made natively first, the RSA key search (seconds of emulated bignum
/// work) and six emulated ssh-keygen runs are saved. Without ssh-keygen on
/// the host the postinst makes them as usual.
const SSH_HOST_KEYS: &str = "if command -v ssh-keygen >/dev/null; then \
     mkdir -p \"$1/etc/ssh\" && for t in rsa ecdsa ed25519; do \
     ssh-keygen -q -t \"$t\" -N '' -f \"$1/etc/ssh/ssh_host_${t}_key\" </dev/null || exit 1; \
     done; fi";

/// The hooks for a bootstrap that defers `deferred`; with `ssh_keys`, the
/// SSH host keys are made natively before openssh-server installs.
pub fn hooks(deferred: &[Deferred], ssh_keys: bool) -> Hooks {
    let mut h = Hooks::default();
    if ssh_keys {
        h.essential.push(SSH_HOST_KEYS.to_owned());
    }
    for d in deferred {
        let path = d.path();
        // The host's dpkg-divert edits the target's diversion list natively.
        h.essential.push(format!(
            "dpkg-divert --root \"$1\" --quiet --local --rename --add {path} && \
             ln -s /bin/true \"$1{path}\""
        ));
        h.customize.push(format!(
            "rm -f \"$1{path}\" && dpkg-divert --root \"$1\" --quiet --local --rename --remove {path}"
        ));
        if let Some(redo) = d.redo() {
            h.customize.push(redo.to_owned());
        }
    }
    h
}

/// The CPU qemu-user emulates for the bootstrap: Debian's arm64 baseline
/// is ARMv8.0, and without pointer authentication and SVE to emulate the
/// same programs take ~20 % less time than on QEMU's default `max`.
pub const QEMU_CPU_ARM64: &str = "cortex-a72";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_diversion_is_removed_after_its_work_is_redone() {
        let h = hooks(&[Deferred::UpdateInitramfs, Deferred::Depmod], false);
        assert_eq!(h.essential.len(), 2);
        assert!(h.essential[0].contains("--add /usr/sbin/update-initramfs"));
        assert!(h.essential[1].contains("ln -s /bin/true \"$1/usr/sbin/depmod\""));
        // initramfs: remove only; depmod: remove, then native depmod.
        assert_eq!(h.customize.len(), 3);
        assert!(h.customize[1].contains("--remove /usr/sbin/depmod"));
        assert!(h.customize[2].starts_with("for d in"));
        assert!(h
            .customize
            .iter()
            .all(|c| !c.contains("chroot \"$1\" depmod")));
    }

    #[test]
    fn ssh_host_keys_are_made_natively_where_the_postinst_looks() {
        let h = hooks(&[], true);
        assert_eq!(h.essential.len(), 1);
        assert!(h.customize.is_empty());
        if crate::exec::find_program("ssh-keygen").is_none() {
            eprintln!("SKIPPED: ssh-keygen is not installed");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        crate::exec::Cmd::new("sh")
            .args(["-c", &h.essential[0], "hook"])
            .arg(root.path())
            .run()
            .unwrap();
        for t in ["rsa", "ecdsa", "ed25519"] {
            let key = root.path().join(format!("etc/ssh/ssh_host_{t}_key"));
            assert!(key.is_file() && key.with_extension("pub").is_file(), "{t}");
        }
    }

    /// The ca-certificates hook on a tree without emulation: a fake
    /// update-ca-certificates (what --sysroot makes: links with the root
    /// in front) ends with links that are absolute inside the image.
    #[test]
    fn ca_certificate_links_point_inside_the_image() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("usr/sbin")).unwrap();
        std::fs::create_dir_all(r.join("etc/ssl/certs")).unwrap();
        std::fs::write(
            r.join("usr/sbin/update-ca-certificates"),
            "#!/bin/sh\n[ \"$1\" = --sysroot ] || exit 9\nln -s \"$2//usr/share/ca-certificates/x.crt\" \"$2/etc/ssl/certs/x.pem\"\nln -s x.pem \"$2/etc/ssl/certs/abcd.0\"\n",
        )
        .unwrap();
        let script = Deferred::UpdateCaCertificates.redo().unwrap();
        crate::exec::Cmd::new("sh")
            .args(["-c", script, "hook"])
            .arg(r)
            .run()
            .unwrap();
        let certs = r.join("etc/ssl/certs");
        assert_eq!(
            std::fs::read_link(certs.join("x.pem")).unwrap(),
            std::path::Path::new("/usr/share/ca-certificates/x.crt")
        );
        assert_eq!(
            std::fs::read_link(certs.join("abcd.0")).unwrap(),
            std::path::Path::new("x.pem")
        );
    }
}

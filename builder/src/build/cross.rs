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
//! After the essential set, the host's dpkg unpacks the packages (native
//! decompression and file writes) while the target's dpkg configures them.

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

/// The wrapper apt runs as dpkg for the packages after the essential set
/// (arguments: the target root, then mmdebstrap's `--unset=TMPDIR dpkg`,
/// then apt's own). `--unpack` goes to the host's dpkg with `--root`:
/// decompressing and writing the files natively instead of emulated takes
/// most of an unpack's time, and its maintainer scripts still run chrooted
/// in the target. Everything else (configure, triggers, queries) runs the
/// target's own dpkg in the chroot, as mmdebstrap would: the host dpkg
/// counts arm64 as a foreign architecture and `all` as amd64, so only the
/// target's dpkg checks dependencies right. For the same reason the native
/// unpack takes `--force-depends` (apt has ordered the packages already;
/// the chrooted configure checks every dependency). The host dpkg does not
/// read the target's dpkg.cfg.d, so the path filters come as options.
fn native_unpack_wrapper(dpkg_filters: &[&str]) -> String {
    format!(
        "root=$1; shift\n\
         while [ $# -gt 0 ]; do a=$1; shift; [ \"$a\" = dpkg ] && break; done\n\
         [ \"$a\" = dpkg ] || {{ echo \"nodeforge dpkg wrapper: no dpkg in mmdebstrap's command\" >&2; exit 2; }}\n\
         unset TMPDIR\n\
         case \" $* \" in\n\
         *\" --unpack \"*) exec {} \"$@\" ;;\n\
         *) exec chroot \"$root\" dpkg \"$@\" ;;\n\
         esac\n",
        host_unpack(dpkg_filters)
    )
}

/// The host's dpkg unpacking into the target at shell variable `$root`
/// (packages follow): its log is the target's, and the path filters come
/// as options because the host's dpkg does not read the target's
/// dpkg.cfg.d. `--force-depends` because the host's dpkg sees arm64 as a
/// foreign architecture; the target's dpkg checks dependencies when it
/// configures.
fn host_unpack(dpkg_filters: &[&str]) -> String {
    let filters: Vec<String> = dpkg_filters.iter().map(|f| format!("'--{f}'")).collect();
    format!(
        "dpkg --root=\"$root\" --log=\"$root/var/log/dpkg.log\" --force-unsafe-io --force-depends {}",
        filters.join(" ")
    )
}

/// Essential hook that makes apt unpack the remaining packages natively
/// (see [`native_unpack_wrapper`]): the wrapper is written next to
/// mmdebstrap's apt configuration (both are removed with its temporary
/// directory), and the configuration appended so apt runs it unchrooted.
pub fn native_unpack_hook(dpkg_filters: &[&str]) -> String {
    format!(
        "[ -n \"$MMDEBSTRAP_APT_CONFIG\" ] || {{ echo 'mmdebstrap set no MMDEBSTRAP_APT_CONFIG' >&2; exit 1; }}; \
         w=\"$MMDEBSTRAP_APT_CONFIG.nodeforge-dpkg\"; \
         printf '%s' {} > \"$w\" && \
         printf '%s\\n' 'DPkg::Chroot-Directory \"\";' 'DPkg::Options:: \"sh\";' \
         \"DPkg::Options:: \\\"$w\\\";\" \"DPkg::Options:: \\\"$1\\\";\" >> \"$MMDEBSTRAP_APT_CONFIG\"",
        crate::exec::shell_quote(std::ffi::OsStr::new(&native_unpack_wrapper(
            dpkg_filters
        )))
    )
}

/// A `chroot` that mmdebstrap finds first on its PATH (arguments: those
/// of chroot(8)). mmdebstrap installs the essential set with one
/// `chroot ROOT dpkg --install --force-depends --status-fd=N DEBS…`
/// (measured: ~30 % of an emulated bootstrap, most of it decompressing
/// under emulation). That one command is split: the host's dpkg unpacks
/// the same packages, in the same order, into the root (`--root`, so the
/// preinst scripts still run chrooted; `--force-depends` as mmdebstrap
/// gives), then the target's dpkg configures them in the chroot. Any
/// other command, or that one in another shape, goes to the real chroot
/// unchanged, so a different mmdebstrap is only slower, never wrong.
/// Between the two, `native-tools` next to the wrapper (the script
/// [`native_tools`]) runs, so the essential set configures natively too.
pub fn essential_chroot_wrapper(real_chroot: &std::path::Path, dpkg_filters: &[&str]) -> String {
    ESSENTIAL_CHROOT_WRAPPER
        .replace(
            "@CHROOT@",
            &crate::exec::shell_quote(real_chroot.as_os_str()),
        )
        .replace("@HOST_UNPACK@", &host_unpack(dpkg_filters))
}

const ESSENTIAL_CHROOT_WRAPPER: &str = r#"#!/bin/sh
if [ $# -gt 5 ] && [ "$2 $3 $4" = 'dpkg --install --force-depends' ]; then
  case $5 in --status-fd=*) ;; *) exec @CHROOT@ "$@" ;; esac
  root=$1; status=$5; shift 5
  names=$(for d in "$@"; do dpkg-deb --field "$root$d" Package || exit 1; done) || exit 1
  for d in "$@"; do set -- "$@" "$root$d"; shift; done
  @HOST_UNPACK@ "$status" --unpack "$@" || exit $?
  sh "${0%/*}/native-tools" "$root" || exit $?
  exec @CHROOT@ "$root" dpkg --force-depends "$status" --configure $names
fi
exec @CHROOT@ "$@"
"#;

/// The target programs replaced by the host's while packages configure:
/// the interpreters, and the text and file tools scripts start most
/// (measured with process accounting: grep alone took 9 s of emulated CPU
/// in the arm64 sentinel bootstrap, ca-certificates' debconf script
/// greps once per certificate). Nothing here reports the machine
/// (`uname`, `arch`): a script asking gets the target's answer.
const NATIVE_TOOLS_LIST: &[&str] = &[
    "/usr/bin/dash",
    "/usr/bin/perl",
    "/usr/bin/grep",
    "/usr/bin/sed",
    "/usr/bin/basename",
    "/usr/bin/dirname",
    "/usr/bin/readlink",
    "/usr/bin/cat",
    "/usr/bin/rm",
    "/usr/bin/ln",
    "/usr/bin/mkdir",
    "/usr/bin/chmod",
    "/usr/bin/chown",
    "/usr/bin/cp",
    "/usr/bin/mv",
    "/usr/bin/touch",
    "/usr/bin/sort",
    "/usr/bin/cut",
    "/usr/bin/tr",
    "/usr/bin/head",
    "/usr/bin/tail",
    "/usr/bin/wc",
    "/usr/bin/stat",
    "/usr/bin/find",
    "/usr/bin/xargs",
    "/usr/bin/mktemp",
    "/usr/bin/expr",
];

/// The essential-hook script (see [`NATIVE_TOOLS_SCRIPT`]).
pub fn native_tools() -> String {
    NATIVE_TOOLS_SCRIPT.replace("@TOOLS@", &NATIVE_TOOLS_LIST.join(" "))
}

/// The customize-hook script (see [`NATIVE_TOOLS_UNDO_SCRIPT`]).
pub fn native_tools_undo() -> String {
    NATIVE_TOOLS_UNDO_SCRIPT.replace("@TOOLS@", &NATIVE_TOOLS_LIST.join(" "))
}

/// Script that makes the target's shell, perl and common tools
/// ([`NATIVE_TOOLS_LIST`]) run natively while packages configure. Most
/// maintainer-script time under emulation is interpreter and tool work:
/// dash running the scripts, perl running debconf and deb-systemd-helper,
/// grep and sed, dozens of times per package. The host's programs are put
/// in place of the target's (each diverted with dpkg-divert, so dpkg keeps
/// the real files), with the host's shared libraries and perl's own
/// modules at the host's paths, which no package of the target's
/// architecture uses. The scripts still run chrooted and read and write
/// only the target; any other program they start is the target's. If any
/// of those paths already exists in the target, nothing is changed; run a
/// second time, it does nothing. [`NATIVE_TOOLS_UNDO_SCRIPT`]
/// removes all of it before the image is finished.
const NATIVE_TOOLS_SCRIPT: &str = r#"r=$1; list="$r/var/lib/nodeforge-native.list"
[ ! -e "$list" ] || exit 0
tools="@TOOLS@"
for t in $tools; do [ -x "$t" ] && [ -e "$r$t" ] || exit 0; done
libs=$(for t in $tools; do ldd "$t"; done | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $2 ~ /^\(/ { print $1 }' | sort -u)
inc=$(perl -e 'print "$_\n" for grep { m{^/usr/(lib|share)/.*perl} && !m{/perl5$} && !m{/perl5/} && -d } @INC')
for p in $libs $inc; do [ -e "$r$p" ] || [ -L "$r$p" ] && { echo "nodeforge: $p exists in the image; maintainer scripts run emulated" >&2; exit 0; }; done
: > "$list"
newdir() {
  local d top
  d=$1; top=
  while [ ! -e "$r$d" ] && [ ! -L "$r$d" ]; do top=$d; d=$(dirname "$d"); done
  [ -n "$top" ] || return 0
  # A merged-/usr root (systemd's preinst checks) gets /lib64 as a link.
  if [ "$d" = / ] && [ -L "$r/lib" ]; then
    newdir "/usr$top" && ln -s "usr$top" "$r$top" || return 1
  fi
  echo "$top" >> "$list" && mkdir -p "$r$1"
}
for p in $libs; do
  newdir "$(dirname "$p")" && cp -L "$p" "$r$p" && echo "$p" >> "$list" || exit 1
done
for p in $inc; do
  newdir "$(dirname "$p")" && cp -a "$(readlink -f "$p")" "$r$p" && echo "$p" >> "$list" || exit 1
done
for t in $tools; do
  dpkg-divert --root "$r" --quiet --local --rename --divert "$t.nodeforge-target" --add "$t" &&
  cp "$t" "$r$t" || exit 1
done"#;

/// Customize hook: puts the target's own programs back and removes
/// every file and directory [`NATIVE_TOOLS_SCRIPT`] added.
const NATIVE_TOOLS_UNDO_SCRIPT: &str = r#"r=$1; list="$r/var/lib/nodeforge-native.list"
[ -f "$list" ] || exit 0
for t in @TOOLS@; do
  rm -f "$r$t" && dpkg-divert --root "$r" --quiet --local --rename --remove "$t" || exit 1
done
tac "$list" | while read -r p; do rm -rf "$r$p"; done
rm -f "$list""#;

/// The CPU qemu-user emulates for the bootstrap: Debian's arm64 baseline
/// is ARMv8.0, and without pointer authentication and SVE to emulate the
/// same programs take ~20 % less time than on QEMU's default `max`.
pub const QEMU_CPU_ARM64: &str = "cortex-a72";

#[cfg(test)]
#[path = "cross_tests.rs"]
mod tests;

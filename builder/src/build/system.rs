//! Step `system`: what every node needs configured in its root: hostname,
//! fstab by PARTUUID, an empty machine-id, DHCP networking, and the host
//! firewall when the profile has one.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use anyhow::{Context, Result};

use super::context::BuildContext;
use super::progress::StepOutcome;
use crate::disk::PartitionKind;

const DHCP_NETWORK: &str = "\
# Written by nodeforge: DHCP on every wired interface.
[Match]
Name=en* eth*

[Network]
DHCP=yes
";

/// What this step writes depends on: the hostname, the firmware and the
/// partitions fstab names.
pub fn inputs(plan: &crate::plan::Plan) -> serde_json::Value {
    let p = &plan.profile;
    serde_json::json!({
        "hostname": p.hostname,
        "firmware": p.hardware.firmware,
        "rpi": p.hardware.rpi,
        "partitions": plan.layout.partitions,
        "firewall": p.firewall,
    })
}

pub fn run(ctx: &mut BuildContext) -> Result<StepOutcome> {
    let p = &ctx.plan.profile;
    write(ctx, "/etc/hostname", &format!("{}\n", p.hostname))?;
    write(
        ctx,
        "/etc/hosts",
        &format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{}\n::1\t\tlocalhost ip6-localhost ip6-loopback\n",
            p.hostname
        ),
    )?;
    write(ctx, "/etc/fstab", &fstab(ctx))?;
    if ctx.plan.layout.has_slots() {
        // Mount points of the state partition and its bind mounts.
        use nodeforge_firstboot::slots::{PERSISTENT, STATE_MOUNT};
        for at in std::iter::once(STATE_MOUNT).chain(PERSISTENT.iter().map(|(_, at, _)| *at)) {
            crate::fsutil::create_dir_all(ctx.target(at))?;
        }
    }
    // The partition mounted there would hide whatever packages put below
    // the mount point (raspi-firmware copies itself into /boot/firmware).
    let mount = p.hardware.firmware.boot_mount();
    let dir = ctx.target(mount);
    if dir.is_dir() {
        fs::remove_dir_all(&dir).with_context(|| format!("emptying {mount} in the image"))?;
    }
    crate::fsutil::create_dir_all(&dir)
        .with_context(|| format!("creating {mount} in the image"))?;
    // An empty machine-id makes systemd generate one per machine at first
    // boot, so one image serves many machines.
    write(ctx, "/etc/machine-id", "")?;
    let _ = fs::remove_file(ctx.target("/var/lib/dbus/machine-id"));
    write(
        ctx,
        "/etc/systemd/network/80-nodeforge-dhcp.network",
        DHCP_NETWORK,
    )?;
    if let Some(rpi) = &p.hardware.rpi {
        raspi_firmware_defaults(ctx, rpi)?;
    }
    for unit in ["systemd-networkd.service", "systemd-resolved.service"] {
        enable_unit(&ctx.rootfs, unit)?;
    }
    if let Some(fw) = &p.firewall {
        write(
            ctx,
            crate::firewall::RULESET_PATH,
            &crate::firewall::ruleset(fw),
        )?;
        let unit = format!("/etc/systemd/system/{}", crate::firewall::UNIT_NAME);
        write(ctx, &unit, crate::firewall::UNIT)?;
        enable_unit(&ctx.rootfs, crate::firewall::UNIT_NAME)?;
    }
    remove_ssh_host_keys(ctx)?;
    Ok(StepOutcome::Done)
}

/// openssh-server's postinst made host keys inside the build: every
/// machine flashed from the image would share them. They are removed, and
/// sshd makes its own at first start (the first-boot agent makes them too
/// and keeps whichever exist).
fn remove_ssh_host_keys(ctx: &BuildContext) -> Result<()> {
    let ssh = ctx.target("/etc/ssh");
    let Ok(entries) = fs::read_dir(&ssh) else {
        return Ok(());
    };
    for e in entries {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with("ssh_host_") {
            fs::remove_file(e.path())
                .with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    if ctx.target("/usr/lib/systemd/system/ssh.service").is_file() {
        write(
            ctx,
            "/etc/systemd/system/ssh.service.d/10-nodeforge-host-keys.conf",
            SSH_KEYGEN_DROPIN,
        )?;
        write(
            ctx,
            "/etc/ssh/sshd_config.d/05-nodeforge-host-key.conf",
            SSHD_HOST_KEY,
        )?;
    }
    Ok(())
}

/// sshd refuses to start without a host key; the ed25519 one is made
/// before Debian's own `sshd -t` check runs unless the first-boot agent
/// made it already. Only that one: `ssh-keygen -A` also made an RSA key,
/// seconds of a first boot on a slow CPU, for clients older than OpenSSH
/// 6.5 (2014). The key is made aside and linked into place, so the agent
/// (which makes it too when it gets there first) never reads it half
/// written, and neither replaces the other's.
const SSH_KEYGEN_DROPIN: &str = "\
# Written by nodeforge: a per-machine host key, made at first start.
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'k=/etc/ssh/ssh_host_ed25519_key; test -e $k && exit 0; t=$(mktemp -d /etc/ssh/.keygen.XXXXXX) && /usr/bin/ssh-keygen -q -t ed25519 -N \"\" -f $t/key </dev/null && { ln $t/key $k 2>/dev/null; test -e $k.pub || cp $t/key.pub $k.pub; }; s=$?; rm -rf $t; exit $s'
ExecStartPre=/usr/sbin/sshd -t
";

/// sshd offers only the host key nodeforge makes (Debian's sshd_config
/// reads sshd_config.d first; without a HostKey line sshd looks for every
/// default type and logs each missing one).
const SSHD_HOST_KEY: &str = "\
# Written by nodeforge: the one host key every node has (see ssh.service.d).
HostKey /etc/ssh/ssh_host_ed25519_key
";

fn fstab(ctx: &BuildContext) -> String {
    let layout = &ctx.plan.layout;
    let root = layout.partition(PartitionKind::Root);
    let esp = layout.partition(PartitionKind::Esp);
    // The seed on this partition may hold an auth key until the agent
    // scrubs it: root only. nofail keeps the boot going without it; the
    // agent waits for its mount (WantsMountsFor) to read the seed, so its
    // device may take longer than systemd's default 90 s: udev's first
    // pass took more under load (five TCG guests on two cores), the mount
    // failed and the agent ran without its seed.
    let mount = ctx.plan.profile.hardware.firmware.boot_mount();
    let esp_line = format!(
        "PARTUUID={}\t{mount}\tvfat\tumask=0077,nofail,x-systemd.device-timeout=5min\t0\t2\n",
        esp.partuuid
    );
    let Some(state) = layout.find(PartitionKind::State) else {
        return format!(
            "# Written by nodeforge; partitions are found by PARTUUID.\n\
             PARTUUID={}\t/\text4\terrors=remount-ro\t0\t1\n{esp_line}",
            root.partuuid
        );
    };
    // With A/B slots, / is whichever slot systemd-boot started (root= on
    // the kernel command line, its options in rootflags=); what outlives
    // an update is bind-mounted from the state partition before any
    // service that writes there starts (local-fs.target).
    use nodeforge_firstboot::slots::{PERSISTENT, STATE_MOUNT};
    let mut text = format!(
        "# Written by nodeforge; partitions are found by PARTUUID. / is the slot\n\
         # systemd-boot started (root= on the kernel command line).\n\
         PARTUUID={}\t{STATE_MOUNT}\text4\terrors=remount-ro\t0\t2\n",
        state.partuuid
    );
    for (dir, at, _) in PERSISTENT {
        text.push_str(&format!(
            "{STATE_MOUNT}/{dir}\t{at}\tnone\tbind,x-systemd.requires-mounts-for={STATE_MOUNT}\t0\t0\n"
        ));
    }
    text.push_str(&esp_line);
    text
}

/// raspi-firmware's kernel hook rewrites the boot partition when the node
/// upgrades its kernel: tell it the root by PARTUUID (as cmdline.txt has
/// it) and the hardware's config.txt lines, so an upgraded node boots the
/// same way.
fn raspi_firmware_defaults(ctx: &BuildContext, rpi: &crate::profile::RpiFile) -> Result<()> {
    let defaults = ctx.target("/etc/default/raspi-firmware");
    if !defaults.is_file() {
        return Ok(());
    }
    let root = ctx.plan.layout.partition(PartitionKind::Root);
    let mut text =
        fs::read_to_string(&defaults).with_context(|| format!("reading {}", defaults.display()))?;
    text.push_str(&format!(
        "\n# Written by nodeforge: the root partition as cmdline.txt names it.\nROOTPART=\"PARTUUID={}\"\n",
        root.partuuid
    ));
    write(ctx, "/etc/default/raspi-firmware", &text)?;
    if !rpi.config.is_empty() {
        let mut custom = String::from("# Written by nodeforge: the hardware's config.txt lines.\n");
        for line in &rpi.config {
            custom.push_str(line);
            custom.push('\n');
        }
        write(ctx, "/etc/default/raspi-firmware-custom", &custom)?;
    }
    Ok(())
}

fn write(ctx: &BuildContext, path: &str, contents: &str) -> Result<()> {
    let target = ctx.target(path);
    if let Some(dir) = target.parent() {
        crate::fsutil::create_dir_all(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&target, contents).with_context(|| format!("writing {path} in the image"))
}

/// Enables a systemd unit in `root` as `systemctl enable` would: one
/// symlink per `WantedBy=`/`RequiredBy=` target, and the units in `Also=`.
/// A unit the image does not have is left alone (its package is not
/// installed).
pub fn enable_unit(root: &Path, unit: &str) -> Result<bool> {
    let found = [
        "etc/systemd/system",
        "usr/lib/systemd/system",
        "lib/systemd/system",
    ]
    .iter()
    .map(|d| root.join(d).join(unit))
    .find(|p| p.is_file());
    let Some(path) = found else {
        return Ok(false);
    };
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let install = parse_install(&text);
    let link_target = Path::new("/").join(path.strip_prefix(root).expect("found below root"));
    for (dir_suffix, targets) in [
        (".wants", &install.wanted_by),
        (".requires", &install.required_by),
    ] {
        for t in targets {
            let dir = root
                .join("etc/systemd/system")
                .join(format!("{t}{dir_suffix}"));
            crate::fsutil::create_dir_all(&dir)
                .with_context(|| format!("creating {}", dir.display()))?;
            let link = dir.join(unit);
            let _ = fs::remove_file(&link);
            symlink(&link_target, &link).with_context(|| format!("linking {}", link.display()))?;
        }
    }
    for also in &install.also {
        enable_unit(root, also)?;
    }
    Ok(true)
}

#[derive(Debug, Default, PartialEq)]
struct Install {
    wanted_by: Vec<String>,
    required_by: Vec<String>,
    also: Vec<String>,
}

fn parse_install(unit: &str) -> Install {
    let mut out = Install::default();
    let mut in_install = false;
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        if !in_install {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let list = match key.trim() {
            "WantedBy" => &mut out.wanted_by,
            "RequiredBy" => &mut out.required_by,
            "Also" => &mut out.also,
            _ => continue,
        };
        list.extend(value.split_whitespace().map(str::to_owned));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_section_is_read() {
        let unit = "[Unit]\nWantedBy=nope\n[Install]\nWantedBy=multi-user.target\nAlso=a.socket b.socket\n";
        let i = parse_install(unit);
        assert_eq!(i.wanted_by, vec!["multi-user.target"]);
        assert_eq!(i.also, vec!["a.socket", "b.socket"]);
        assert!(i.required_by.is_empty());
    }

    #[test]
    fn enable_links_into_wants_and_follows_also() {
        let root = tempfile::tempdir().unwrap();
        let units = root.path().join("usr/lib/systemd/system");
        fs::create_dir_all(&units).unwrap();
        fs::write(
            units.join("x.service"),
            "[Install]\nWantedBy=multi-user.target\nAlso=x.socket\n",
        )
        .unwrap();
        fs::write(
            units.join("x.socket"),
            "[Install]\nWantedBy=sockets.target\n",
        )
        .unwrap();
        assert!(enable_unit(root.path(), "x.service").unwrap());
        let link = root
            .path()
            .join("etc/systemd/system/multi-user.target.wants/x.service");
        assert_eq!(
            fs::read_link(link).unwrap(),
            Path::new("/usr/lib/systemd/system/x.service")
        );
        assert!(root
            .path()
            .join("etc/systemd/system/sockets.target.wants/x.socket")
            .is_symlink());
        assert!(!enable_unit(root.path(), "missing.service").unwrap());
    }

    /// Regression: the agent read the host key while sshd's keygen was
    /// writing it in place. The key is now made aside and linked.
    #[test]
    fn sshds_keygen_links_a_whole_key_and_never_replaces_one() {
        let d = tempfile::tempdir().unwrap();
        let ssh = d.path().join("etc/ssh");
        fs::create_dir_all(&ssh).unwrap();
        let line = SSH_KEYGEN_DROPIN
            .lines()
            .find(|l| l.contains("ssh-keygen"))
            .unwrap()
            .trim_start_matches("ExecStartPre=/bin/sh -c '")
            .trim_end_matches('\'')
            .replace("\\\"", "\"")
            .replace("/etc/ssh", &ssh.display().to_string());
        let run = || {
            let out = std::process::Command::new("sh")
                .args(["-c", &line])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}\n{line}");
        };
        run();
        let key = fs::read_to_string(ssh.join("ssh_host_ed25519_key")).unwrap();
        assert!(
            key.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"),
            "{key}"
        );
        assert!(ssh.join("ssh_host_ed25519_key.pub").is_file());
        run();
        assert_eq!(
            fs::read_to_string(ssh.join("ssh_host_ed25519_key")).unwrap(),
            key
        );
        let left: Vec<_> = fs::read_dir(&ssh).unwrap().collect();
        assert_eq!(left.len(), 2, "no temporary directory left: {left:?}");
    }
}

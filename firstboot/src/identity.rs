//! Clone-safe identity: a disk copied from a node that already joined must
//! not come up as that node on another machine (two machines with one
//! node key knock each other off the tailnet). The agent records the
//! machine it joined on; before tailscaled starts on every boot
//! (`nodeforge-firstboot identity-check`, a drop-in of tailscaled.service),
//! a different machine has the tailnet state moved aside, so tailscaled
//! starts logged out, and the agent reports `cloned-disk` until a new seed
//! brings a key; the node then joins as a new node.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil::{atomic_write, read_optional, under};

/// What the node was joined on.
pub const IDENTITY_PATH: &str = "/var/lib/nodeforge/identity.json";
/// Present from a detected clone until the node has joined anew.
pub const CLONED_PATH: &str = "/var/lib/nodeforge/cloned-disk.json";
/// tailscaled's state directory (the real package's StateDirectory).
pub const TAILSCALE_STATE_DIR: &str = "/var/lib/tailscale";

/// Placeholders firmware puts where a real product UUID belongs.
const DUMMY_UUIDS: &[&str] = &[
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "03000200-0400-0500-0006-000700080009",
];

/// What tells this machine from another.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// SMBIOS system UUID, where the firmware has a real one.
    pub product_uuid: Option<String>,
    /// Permanent MAC addresses of the physical NICs, sorted.
    pub macs: Vec<String>,
    /// The serial number of the disk holding `/`, where it reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_serial: Option<String>,
}

/// A clone found: what the disk was joined on, what it runs on now and
/// where the old tailnet state went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cloned {
    pub joined_on: Identity,
    pub now_on: Identity,
    pub state_moved_to: String,
}

impl Identity {
    /// This machine's identity, read under `root`.
    pub fn current(root: &Path) -> Identity {
        let product_uuid = fs::read_to_string(under(root, "/sys/class/dmi/id/product_uuid"))
            .ok()
            .map(|u| u.trim().to_ascii_lowercase())
            .filter(|u| !u.is_empty() && !DUMMY_UUIDS.contains(&u.as_str()));
        let mut macs = Vec::new();
        if let Ok(entries) = fs::read_dir(under(root, "/sys/class/net")) {
            for e in entries.flatten() {
                let dir = e.path();
                // Physical NICs only: bridges, veths and tailscale0 come and go.
                let permanent =
                    fs::read_to_string(dir.join("addr_assign_type")).is_ok_and(|t| t.trim() == "0");
                if !dir.join("device").exists() || !permanent {
                    continue;
                }
                if let Ok(mac) = fs::read_to_string(dir.join("address")) {
                    let mac = mac.trim().to_ascii_lowercase();
                    if !mac.is_empty() && mac != "00:00:00:00:00:00" {
                        macs.push(mac);
                    }
                }
            }
        }
        macs.sort();
        macs.dedup();
        Identity {
            product_uuid,
            macs,
            disk_serial: root_disk_serial(root),
        }
    }

    /// Whether `self` (recorded) and `now` are one machine; None when
    /// nothing can tell. The SMBIOS UUID decides where both have one;
    /// without it, the NICs and the root disk: one NIC replaced, or the
    /// disk copied to a new one in the same machine, or the disk moved to
    /// another machine, is still the node; a copy in another machine
    /// (no NIC and no disk serial in common) is not.
    pub fn same_machine(&self, now: &Identity) -> Option<bool> {
        if let (Some(a), Some(b)) = (&self.product_uuid, &now.product_uuid) {
            return Some(a == b);
        }
        let nics = (!self.macs.is_empty() && !now.macs.is_empty())
            .then(|| self.macs.iter().any(|m| now.macs.contains(m)));
        let disk = match (&self.disk_serial, &now.disk_serial) {
            (Some(a), Some(b)) => Some(a == b),
            _ => None,
        };
        match (nics, disk) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            // Both differ: a copy in another machine.
            (Some(false), Some(false)) | (Some(false), None) => Some(false),
            // Only the disk differs and the NICs cannot tell: perhaps the
            // disk was copied to a new one in the same machine; act only
            // on a definite mismatch.
            (None, _) => None,
        }
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(u) = &self.product_uuid {
            parts.push(format!("product UUID {u}"));
        }
        if !self.macs.is_empty() {
            parts.push(format!("NICs {}", self.macs.join(" ")));
        }
        if let Some(d) = &self.disk_serial {
            parts.push(format!("root disk {d}"));
        }
        crate::text::join_or(&parts, ", ", "no readable identity")
    }
}

/// The serial of the disk `/` is on: the root mount's device number
/// (mountinfo) to its sysfs node, up to the whole disk for a partition,
/// then the serial the driver reports (virtio's `serial`, NVMe's
/// `device/serial`) or its WWID (NVMe, and SATA/SCSI's `device/wwid`). None for a root that is
/// no block device (netboot's overlay) or a disk without one.
fn root_disk_serial(root: &Path) -> Option<String> {
    let mountinfo = fs::read_to_string(under(root, "/proc/self/mountinfo")).ok()?;
    // The last mount on `/` is the one visible.
    let majmin = mountinfo.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(4) == Some(&"/")).then(|| f.get(2).map(|s| s.to_string()))?
    })?;
    let node = fs::canonicalize(under(root, &format!("/sys/dev/block/{majmin}"))).ok()?;
    let disk = if node.join("partition").exists() {
        node.parent()?.to_path_buf()
    } else {
        node
    };
    ["serial", "device/serial", "wwid", "device/wwid"]
        .iter()
        .filter_map(|f| fs::read_to_string(disk.join(f)).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
}

/// Records the machine the node joined on, and forgets an earlier clone.
pub fn record(root: &Path) -> Result<()> {
    let id = Identity::current(root);
    let json = serde_json::to_string_pretty(&id).expect("Identity serialises");
    atomic_write(&under(root, IDENTITY_PATH), json.as_bytes(), 0o644)?;
    let cloned = under(root, CLONED_PATH);
    if cloned.exists() {
        fs::remove_file(&cloned).with_context(|| format!("removing {}", cloned.display()))?;
    }
    Ok(())
}

/// Whether the node has recorded where it joined.
pub fn recorded(root: &Path) -> bool {
    under(root, IDENTITY_PATH).is_file()
}

/// The clone found on this boot or an earlier one, until the node joins.
pub fn cloned(root: &Path) -> Result<Option<Cloned>> {
    let path = under(root, CLONED_PATH);
    match read_optional(&path)? {
        None => Ok(None),
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("parsing {}", path.display())),
    }
}

/// Before tailscaled starts: on another machine than the one recorded,
/// moves the tailnet state aside (kept, for a post-mortem) and records the
/// clone; otherwise does nothing. Never fails the boot over an unreadable
/// identity: only a definite mismatch acts.
pub fn check(root: &Path) -> Result<Option<Cloned>> {
    let Some(text) = read_optional(&under(root, IDENTITY_PATH))? else {
        return Ok(None);
    };
    let Ok(joined_on) = serde_json::from_str::<Identity>(&text) else {
        return Ok(None);
    };
    let now_on = Identity::current(root);
    if joined_on.same_machine(&now_on) != Some(false) {
        return Ok(None);
    }
    let state = under(root, TAILSCALE_STATE_DIR);
    let stamp = crate::status::now_rfc3339().replace([':', '.'], "");
    let aside: PathBuf = under(root, &format!("/var/lib/nodeforge/cloned-state-{stamp}"));
    fs::create_dir_all(&aside).with_context(|| format!("creating {}", aside.display()))?;
    if let Ok(entries) = fs::read_dir(&state) {
        for e in entries.flatten() {
            let to = aside.join(e.file_name());
            fs::rename(e.path(), &to).with_context(|| {
                format!("moving {} aside to {}", e.path().display(), to.display())
            })?;
        }
    }
    let found = Cloned {
        joined_on,
        now_on,
        state_moved_to: format!(
            "/{}",
            aside
                .strip_prefix(root)
                .unwrap_or(&aside)
                .display()
                .to_string()
                .trim_start_matches('/')
        ),
    };
    let json = serde_json::to_string_pretty(&found).expect("Cloned serialises");
    atomic_write(&under(root, CLONED_PATH), json.as_bytes(), 0o644)?;
    let old = under(root, IDENTITY_PATH);
    fs::remove_file(&old)
        .with_context(|| format!("forgetting the old identity: removing {}", old.display()))?;
    Ok(Some(found))
}

//! A/B root slots: the names the builder and the node share. The builder
//! writes slot A's boot entry, the state partition and the mounts that put
//! the persistent directories on it; the node's updater writes slot B's
//! entry with systemd-boot's boot counting, and the agent blesses it.
//!
//! Boot entries follow the Boot Loader Specification as systemd-boot 257
//! reads it: both slots' entries share `sort-key nodeforge`, so the one
//! with the higher `version` boots first; an entry named
//! `nodeforge-b+3.conf` has three tries, after which systemd-boot sorts it
//! last and the other slot boots.

use serde::{Deserialize, Serialize};

/// Where the state partition is mounted.
pub const STATE_MOUNT: &str = "/var/lib/nodeforge-state";

/// What lives on the state partition: (its directory there, where it is
/// bind-mounted in every slot, its mode). The agent's own directory holds
/// its journal, secrets and status; the SSH host keys and the seed's
/// results that a slot carries in /etc are copied by the updater.
pub const PERSISTENT: &[(&str, &str, u32)] = &[
    ("nodeforge", "/var/lib/nodeforge", 0o700),
    ("tailscale", "/var/lib/tailscale", 0o700),
    ("docker-volumes", "/var/lib/docker/volumes", 0o701),
];

/// The `sort-key` of every slot's entry.
pub const SORT_KEY: &str = "nodeforge";
/// Tries a newly written slot gets before systemd-boot falls back, unless
/// the profile's `[update] tries` says otherwise (systemd's examples use 3).
pub const TRIES: u32 = 3;
/// The most `[update] tries` takes: each failed try is a whole boot.
pub const MAX_TRIES: u32 = 9;
/// Where a slot's kernel and initrd go on the ESP (`/nodeforge/a/…`).
pub fn esp_dir(slot: Slot) -> String {
    format!("nodeforge/{}", slot.letter())
}

/// The release version (image key) a slot holds, on the ESP beside its
/// kernel: written by the build for slot A and by the updater for the slot
/// it writes, so the updater knows what the node already has.
pub fn version_file(slot: Slot) -> String {
    format!("{}/version", esp_dir(slot))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn letter(self) -> char {
        match self {
            Slot::A => 'a',
            Slot::B => 'b',
        }
    }
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// The slots' partitions, baked into the agent's config: the layout is
/// derived from the profile's name and disk geometry, so every build of
/// the profile has the same GUIDs and an update keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotsConfig {
    /// The disk's GPT GUID: a release for another layout is refused.
    pub disk_guid: String,
    pub a: String,
    pub b: String,
    pub state: String,
    /// Boot counting's tries for a newly written slot (`[update] tries`).
    #[serde(default = "default_tries")]
    pub tries: u32,
}

fn default_tries() -> u32 {
    TRIES
}

impl SlotsConfig {
    pub fn partuuid(&self, slot: Slot) -> &str {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }

    /// The slot this boot runs from, by the kernel command line under
    /// `root` (None when it names neither slot's partition).
    pub fn running_slot(&self, root: &std::path::Path) -> std::io::Result<Option<Slot>> {
        let cmdline = std::fs::read_to_string(crate::fsutil::under(root, "/proc/cmdline"))?;
        Ok(self.running(&cmdline))
    }

    /// The slot whose partition `root=PARTUUID=` on `cmdline` names.
    pub fn running(&self, cmdline: &str) -> Option<Slot> {
        let root = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("root=PARTUUID="))?;
        [Slot::A, Slot::B]
            .into_iter()
            .find(|s| self.partuuid(*s).eq_ignore_ascii_case(root))
    }
}

/// One slot's boot entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub slot: Slot,
    /// The generation: 1 for the flashed slot, one more per update.
    pub version: u64,
    pub title: String,
    /// The kernel command line, `root=PARTUUID=` of the slot first.
    pub options: String,
}

impl Entry {
    pub fn text(&self) -> String {
        let dir = esp_dir(self.slot);
        format!(
            "title    {}\nsort-key {SORT_KEY}\nversion  {}\nlinux    /{dir}/vmlinuz\ninitrd   /{dir}/initrd.img\noptions  {}\n",
            self.title, self.version, self.options
        )
    }
}

/// A slot entry's file name: `nodeforge-a.conf`, or with boot counting's
/// counter (tries left, tries done) `nodeforge-b+3.conf`, `nodeforge-b+2-1.conf`
/// or, tries spent, `nodeforge-b+0-3.conf` (sorted after every other entry
/// and booted no more). [`parse_entry_file_name`] reads it back.
pub fn entry_file_name(slot: Slot, counter: Option<(u32, u32)>) -> String {
    match counter {
        None => format!("nodeforge-{}.conf", slot.letter()),
        Some((left, 0)) => format!("nodeforge-{}+{left}.conf", slot.letter()),
        Some((left, done)) => format!("nodeforge-{}+{left}-{done}.conf", slot.letter()),
    }
}

/// A slot entry's file name read back: its slot, and its counter (tries
/// left, tries done) if it has one. systemd-boot renames `+3` to `+2-1`
/// and so on before each try; `+0-3` has none left.
pub fn parse_entry_file_name(name: &str) -> Option<(Slot, Option<(u32, u32)>)> {
    let rest = name.strip_prefix("nodeforge-")?.strip_suffix(".conf")?;
    let (letter, counter) = match rest.split_once('+') {
        Some((l, c)) => (l, Some(c)),
        None => (rest, None),
    };
    let slot = match letter {
        "a" => Slot::A,
        "b" => Slot::B,
        _ => return None,
    };
    let counter = match counter {
        None => None,
        Some(c) => {
            let (left, done) = match c.split_once('-') {
                Some((l, d)) => (l.parse().ok()?, d.parse().ok()?),
                None => (c.parse().ok()?, 0),
            };
            Some((left, done))
        }
    };
    Some((slot, counter))
}

/// The newest kernel in a root's `/boot` (`vmlinuz-VERSION`), "6.12.10"
/// after "6.12.9": the builder's ESP and the updater's switch take the
/// same one.
pub fn newest_kernel(boot: &std::path::Path) -> std::io::Result<Option<String>> {
    let key = |s: &str| -> Vec<(u64, String)> {
        s.split(|c: char| !c.is_ascii_alphanumeric())
            .map(|part| {
                let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
                (digits.parse().unwrap_or(0), part[digits.len()..].to_owned())
            })
            .collect()
    };
    let mut versions = Vec::new();
    for e in std::fs::read_dir(boot)? {
        if let Some(v) = e?
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("vmlinuz-"))
        {
            versions.push(v.to_owned());
        }
    }
    Ok(versions.into_iter().max_by_key(|v| key(v)))
}

/// The `version` line of an entry's text.
pub fn entry_version(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("version"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_round_trip_with_systemd_boots_counters() {
        assert_eq!(entry_file_name(Slot::A, None), "nodeforge-a.conf");
        assert_eq!(entry_file_name(Slot::B, Some((3, 0))), "nodeforge-b+3.conf");
        assert_eq!(
            entry_file_name(Slot::B, Some((0, 3))),
            "nodeforge-b+0-3.conf"
        );
        assert_eq!(
            parse_entry_file_name("nodeforge-b+3.conf"),
            Some((Slot::B, Some((3, 0))))
        );
        assert_eq!(
            parse_entry_file_name("nodeforge-b+0-3.conf"),
            Some((Slot::B, Some((0, 3))))
        );
        assert_eq!(
            parse_entry_file_name("nodeforge-a.conf"),
            Some((Slot::A, None))
        );
        for other in [
            "nodeforge.conf",
            "nodeforge-c.conf",
            "x-a.conf",
            "nodeforge-b+x.conf",
        ] {
            assert_eq!(parse_entry_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn an_entry_names_its_slots_files_and_sorts_by_version() {
        let e = Entry {
            slot: Slot::B,
            version: 2,
            title: "nodeforge web".into(),
            options: "root=PARTUUID=x rw".into(),
        };
        let t = e.text();
        assert!(t.contains("linux    /nodeforge/b/vmlinuz\n"), "{t}");
        assert!(t.contains("sort-key nodeforge\n"), "{t}");
        assert_eq!(entry_version(&t), Some(2));
    }

    #[test]
    fn the_running_slot_is_the_one_root_names() {
        let c = SlotsConfig {
            disk_guid: "d".into(),
            a: "aaaa".into(),
            b: "bbbb".into(),
            state: "ssss".into(),
            tries: TRIES,
        };
        assert_eq!(c.running("quiet root=PARTUUID=BBBB rw"), Some(Slot::B));
        assert_eq!(c.running("root=PARTUUID=aaaa"), Some(Slot::A));
        assert_eq!(c.running("root=/dev/vda2"), None);
    }
}

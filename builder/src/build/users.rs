//! Step `users`: accounts and SSH keys written straight into the target's
//! passwd/group/shadow files (no chroot, no useradd), so the step is pure
//! text work that tests can check line by line.

use std::fs;
use std::os::unix::fs::chown;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::context::BuildContext;
use super::progress::StepOutcome;
use crate::profile::User;

const FIRST_UID: u32 = 1000;
const LAST_UID: u32 = 59999;

/// The account databases of a root filesystem, edited in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounts {
    pub passwd: String,
    pub group: String,
    pub shadow: String,
    pub gshadow: String,
}

/// Uid and gid given to a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

impl Accounts {
    /// Adds `user` with a private group, a locked password (keys only) and
    /// membership in its groups; groups the image lacks are created. An
    /// existing user of that name keeps its ids.
    pub fn add_user(&mut self, user: &User) -> Result<Ids> {
        if let Some(ids) = find_ids(&self.passwd, &user.name) {
            self.add_memberships(user)?;
            return Ok(ids);
        }
        let uid = free_id(&self.passwd, &self.group)?;
        let gid = uid;
        push_line(&mut self.group, &format!("{}:x:{gid}:", user.name));
        push_line(&mut self.gshadow, &format!("{}:!::", user.name));
        push_line(
            &mut self.passwd,
            &format!("{0}:x:{uid}:{gid}::/home/{0}:{1}", user.name, user.shell),
        );
        // `!` locks the password: these accounts log in with keys only.
        push_line(
            &mut self.shadow,
            &format!("{}:!:19000:0:99999:7:::", user.name),
        );
        self.add_memberships(user)?;
        Ok(Ids { uid, gid })
    }

    fn add_memberships(&mut self, user: &User) -> Result<()> {
        for g in &user.groups {
            if !self.group.lines().any(|l| l.split(':').next() == Some(g)) {
                let gid = free_id(&self.passwd, &self.group)?;
                push_line(&mut self.group, &format!("{g}:x:{gid}:"));
                push_line(&mut self.gshadow, &format!("{g}:!::"));
            }
            self.group = add_member(&self.group, g, &user.name, 3);
            self.gshadow = add_member(&self.gshadow, g, &user.name, 3);
        }
        Ok(())
    }
}

fn push_line(text: &mut String, line: &str) {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
}

fn find_ids(passwd: &str, name: &str) -> Option<Ids> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == name).then(|| {
            Some(Ids {
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        })?
    })
}

/// The lowest id from 1000 that is neither a uid nor a gid.
fn free_id(passwd: &str, group: &str) -> Result<u32> {
    let used: std::collections::BTreeSet<u32> = passwd
        .lines()
        .chain(group.lines())
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .collect();
    (FIRST_UID..=LAST_UID)
        .find(|id| !used.contains(id))
        .context("no free user id left between 1000 and 59999")
}

/// Adds `member` to the member list (field `field`) of group `group`.
fn add_member(text: &str, group: &str, member: &str, field: usize) -> String {
    let mut out = String::with_capacity(text.len() + member.len() + 1);
    for line in text.lines() {
        let mut f: Vec<String> = line.split(':').map(str::to_owned).collect();
        if f.first().map(String::as_str) == Some(group) && f.len() > field {
            let mut members: Vec<&str> = f[field].split(',').filter(|m| !m.is_empty()).collect();
            if !members.contains(&member) {
                members.push(member);
            }
            f[field] = members.join(",");
            out.push_str(&f.join(":"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

pub fn inputs(plan: &crate::plan::Plan) -> serde_json::Value {
    serde_json::json!({ "users": plan.profile.users })
}

pub fn run(ctx: &mut BuildContext) -> Result<StepOutcome> {
    let users = &ctx.plan.profile.users;
    if users.is_empty() {
        return Ok(StepOutcome::Skipped("the profile declares no users".into()));
    }
    let read = |name: &str| -> Result<String> {
        let p = ctx.target(&format!("/etc/{name}"));
        fs::read_to_string(&p).with_context(|| format!("reading /etc/{name} of the image"))
    };
    let mut acc = Accounts {
        passwd: read("passwd")?,
        group: read("group")?,
        shadow: read("shadow")?,
        gshadow: read("gshadow")?,
    };
    for user in users {
        let ids = acc
            .add_user(user)
            .with_context(|| format!("adding user {}", user.name))?;
        write_home(&ctx.rootfs, user, ids)?;
        if user.sudo {
            let rule = format!("{} ALL=(ALL) NOPASSWD:ALL\n", user.name);
            let path = ctx.target(&format!("/etc/sudoers.d/90-nodeforge-{}", user.name));
            crate::fsutil::create_dir_all(path.parent().expect("has parent"))?;
            fs::write(&path, rule).with_context(|| format!("writing {}", path.display()))?;
            crate::fsutil::set_mode(&path, 0o440)?;
        }
    }
    for (name, text, mode) in [
        ("passwd", &acc.passwd, 0o644),
        ("group", &acc.group, 0o644),
        ("shadow", &acc.shadow, 0o640),
        ("gshadow", &acc.gshadow, 0o640),
    ] {
        let p = ctx.target(&format!("/etc/{name}"));
        let meta = fs::metadata(&p).with_context(|| format!("reading {}", p.display()))?;
        fs::write(&p, text).with_context(|| format!("writing /etc/{name} of the image"))?;
        // Keep the owner/group the package gave the file (shadow is root:shadow).
        crate::fsutil::set_mode(&p, mode)?;
        use std::os::unix::fs::MetadataExt;
        chown(&p, Some(meta.uid()), Some(meta.gid()))?;
    }
    Ok(StepOutcome::Done)
}

fn write_home(root: &Path, user: &User, ids: Ids) -> Result<()> {
    let home = root.join("home").join(&user.name);
    let ssh = home.join(".ssh");
    crate::fsutil::create_dir_all(&ssh).with_context(|| format!("creating {}", ssh.display()))?;
    let skel = root.join("etc/skel");
    if skel.is_dir() {
        for e in fs::read_dir(&skel).with_context(|| format!("listing {}", skel.display()))? {
            let e = e?;
            if e.file_type()?.is_file() {
                let dest = home.join(e.file_name());
                fs::copy(e.path(), &dest).with_context(|| {
                    format!("copying {} to {}", e.path().display(), dest.display())
                })?;
                chown(&dest, Some(ids.uid), Some(ids.gid))?;
            }
        }
    }
    let keys = ssh.join("authorized_keys");
    let mut text = user.authorized_keys.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    fs::write(&keys, text).with_context(|| format!("writing {}", keys.display()))?;
    for (p, mode) in [(&home, 0o750), (&ssh, 0o700), (&keys, 0o600)] {
        crate::fsutil::set_mode(p, mode)?;
        chown(p, Some(ids.uid), Some(ids.gid))?;
    }
    if user.name.contains('/') {
        bail!("user name {} contains '/'", user.name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Accounts {
        Accounts {
            passwd: "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n".into(),
            group: "root:x:0:\nsudo:x:27:\nusers:x:100:\n".into(),
            shadow: "root:*:19000:0:99999:7:::\n".into(),
            gshadow: "root:*::\nsudo:*::\n".into(),
        }
    }

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            shell: "/bin/bash".into(),
            sudo: false,
            authorized_keys: vec![],
        }
    }

    #[test]
    fn adds_user_with_private_group_and_memberships() {
        let mut a = base();
        let ids = a.add_user(&user("admin", &["sudo", "docker"])).unwrap();
        assert_eq!(
            ids,
            Ids {
                uid: 1000,
                gid: 1000
            }
        );
        assert!(a
            .passwd
            .contains("admin:x:1000:1000::/home/admin:/bin/bash\n"));
        assert!(a.group.contains("admin:x:1000:\n"));
        assert!(a.group.contains("sudo:x:27:admin\n"));
        // docker did not exist: created with the next free id.
        assert!(a.group.contains("docker:x:1001:admin\n"), "{}", a.group);
        assert!(a.shadow.contains("admin:!:"));
        assert!(a.gshadow.contains("sudo:*::admin\n"));
    }

    #[test]
    fn second_user_gets_next_id_and_readding_is_idempotent() {
        let mut a = base();
        a.add_user(&user("a", &["sudo"])).unwrap();
        let b = a.add_user(&user("b", &["sudo"])).unwrap();
        assert_eq!(b.uid, 1001);
        let before = a.clone();
        assert_eq!(a.add_user(&user("b", &["sudo"])).unwrap(), b);
        assert_eq!(a, before);
        assert!(a.group.contains("sudo:x:27:a,b\n"));
    }
}

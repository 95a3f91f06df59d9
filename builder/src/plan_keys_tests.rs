//! Every input that changes the base rootfs's bytes is in its key, and
//! nothing else moves it (the other keys: layers.rs, uptodate.rs).

use std::path::Path;

use super::{rootfs_key, Plan};
use crate::profile::{Arch, InitramfsKind};

type Change = Box<dyn Fn(&mut Plan)>;

fn base() -> Plan {
    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/base.toml");
    Plan::load(&profile).unwrap()
}

fn key(plan: &Plan, epoch: Option<i64>) -> String {
    rootfs_key(&plan.profile, &plan.packages, epoch).unwrap()
}

#[test]
fn the_same_inputs_give_the_same_rootfs_key() {
    let (a, b) = (base(), base());
    assert_eq!(key(&a, None), key(&b, None));
    assert_eq!(key(&a, Some(1_764_547_200)), key(&b, Some(1_764_547_200)));
}

#[test]
fn the_epoch_and_its_absence_are_in_the_rootfs_key() {
    let p = base();
    let none = key(&p, None);
    let one = key(&p, Some(1_764_547_200));
    assert_ne!(
        none, one,
        "a tree made at build time must not serve an epoch build"
    );
    assert_ne!(one, key(&p, Some(1_764_547_201)));
    assert_ne!(none, key(&p, Some(0)));
}

#[test]
fn each_bootstrap_input_is_in_the_rootfs_key() {
    let p = base();
    let before = key(&p, None);
    let changes: Vec<(&str, Change)> = vec![
        (
            "suite",
            Box::new(|p| p.profile.debian.suite = "forky".into()),
        ),
        (
            "mirror",
            Box::new(|p| p.profile.debian.mirror = "http://mirror.invalid/debian".into()),
        ),
        (
            "components",
            Box::new(|p| p.profile.debian.components.push("contrib".into())),
        ),
        ("arch", Box::new(|p| p.profile.hardware.arch = Arch::Arm64)),
        ("packages", Box::new(|p| p.packages.push("htop".into()))),
        (
            "initramfs",
            Box::new(|p| p.profile.hardware.initramfs = InitramfsKind::Nodeforge),
        ),
    ];
    for (what, change) in changes {
        let mut q = base();
        change(&mut q);
        assert_ne!(before, key(&q, None), "changing {what} kept the rootfs key");
    }
}

#[test]
fn what_does_not_shape_the_bootstrap_keeps_the_rootfs_key() {
    let p = base();
    let before = key(&p, None);
    let mut q = base();
    q.profile.hostname = "elsewhere".into();
    q.profile.users.clear();
    assert_eq!(
        before,
        key(&q, None),
        "hostname and users are later steps' inputs"
    );
}

#[test]
fn the_plan_carries_the_epoch_it_keyed() {
    let p = base();
    let (epoch, _) = crate::build::reproducible::source_date_epoch(&p.profile).unwrap();
    assert_eq!(p.epoch, epoch);
    assert_eq!(p.rootfs_key, key(&p, epoch));
}

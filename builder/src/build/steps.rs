//! The build's steps, in order: the one list that `nodeforge build` runs,
//! `nodeforge plan` prints and the progress bar counts. Each entry says
//! what it will do (for the plan), whether its changes to the tree are a
//! cached layer and what that layer is keyed on, and which function runs it.

use anyhow::Result;
use serde::Serialize;

use super::context::BuildContext;
use super::progress::StepOutcome;
use super::qcow2;
use super::{
    agent, containers, image, initrd, models, netboot, outputs, overlay, rootfs, system, users,
};
use crate::disk::TableKind;
use crate::oci::docker_store::DOCKER_ROOT;
use crate::oci::lock;
use crate::plan::Plan;
use crate::profile::{Firmware, InitramfsKind, OutputFormat};

/// How a step's result is kept between builds.
#[derive(Clone, Copy)]
pub enum Caching {
    /// The step changes only the tree: what it changed is a layer in the
    /// cache under a key chained from the layer before and these inputs.
    Layer(fn(&BuildContext) -> Result<serde_json::Value>),
    /// The step writes the image or files beside it; it runs every build
    /// (the whole image is reused only when nothing at all changed).
    Always,
}

pub struct Step {
    pub name: &'static str,
    /// Whether the step is part of this plan's build.
    pub applies: fn(&Plan) -> bool,
    /// What `nodeforge plan` says the step will do.
    pub describe: fn(&Plan) -> Vec<String>,
    pub caching: Caching,
    pub run: fn(&mut BuildContext) -> Result<StepOutcome>,
}

fn always(_: &Plan) -> bool {
    true
}

fn uefi(p: &Plan) -> bool {
    p.profile.hardware.firmware == Firmware::Uefi
}

fn rpi(p: &Plan) -> bool {
    p.profile.hardware.firmware == Firmware::Rpi
}

fn wants(p: &Plan, format: OutputFormat) -> bool {
    p.profile.outputs.contains(&format)
}

pub const STEPS: &[Step] = &[
    Step {
        name: "rootfs",
        applies: always,
        describe: |plan| {
            let p = &plan.profile;
            vec![
                format!(
                    "mmdebstrap {} {} [{}]",
                    p.debian.suite,
                    p.hardware.arch.debian(),
                    p.debian.components.join(",")
                ),
                format!("{} packages", plan.packages.len()),
                format!(
                    "{} signed repositories, {} local .deb directories",
                    p.apt.repositories.len(),
                    p.apt.local.len()
                ),
                format!("cache key {}", &plan.rootfs_key[..16]),
            ]
        },
        caching: Caching::Always,
        run: rootfs::run,
    },
    Step {
        name: "system",
        applies: always,
        describe: |plan| {
            vec![
                format!("hostname {}", plan.profile.hostname),
                "fstab, machine-id, network".into(),
            ]
        },
        caching: Caching::Layer(|ctx| Ok(system::inputs(ctx.plan))),
        run: system::run,
    },
    Step {
        name: "overlays",
        applies: always,
        describe: |plan| {
            vec![format!(
                "{} files from {} overlays",
                plan.overlay_files.len(),
                plan.profile.overlays.len()
            )]
        },
        caching: Caching::Layer(|ctx| Ok(overlay::inputs(ctx.plan))),
        run: overlay::run,
    },
    Step {
        name: "users",
        applies: always,
        describe: |plan| {
            let users = plan.profile.users.iter();
            users
                .map(|u| format!("{} ({} keys)", u.name, u.authorized_keys.len()))
                .collect()
        },
        caching: Caching::Layer(|ctx| Ok(users::inputs(ctx.plan))),
        run: users::run,
    },
    Step {
        name: "agent",
        applies: always,
        describe: |plan| {
            let p = &plan.profile;
            let agent = format!("nodeforge-firstboot for {}", p.hardware.arch.rust_target());
            let storage = p.storage.iter().map(|r| {
                format!(
                    "storage {}: {} at {} (formatted only if blank)",
                    r.label,
                    r.filesystem.name(),
                    r.mount
                )
            });
            std::iter::once(agent).chain(storage).collect()
        },
        caching: Caching::Layer(|ctx| Ok(agent::inputs(ctx.plan, &ctx.agent_sha256))),
        run: agent::run,
    },
    Step {
        name: "containers",
        applies: always,
        describe: |plan| {
            let n = lock::profile_images(&plan.profile).len();
            vec![format!(
                "{n} locked images into the engine's store ({DOCKER_ROOT})"
            )]
        },
        caching: Caching::Layer(|ctx| Ok(containers::images_inputs(ctx.plan))),
        run: containers::write_images,
    },
    Step {
        name: "stacks",
        applies: always,
        describe: |plan| {
            let stacks = plan.profile.stacks.iter();
            stacks
                .map(|s| format!("stack {}: {} images", s.name, s.images.len()))
                .collect()
        },
        caching: Caching::Layer(|ctx| containers::stacks_inputs(ctx.plan)),
        run: containers::write_stacks,
    },
    Step {
        name: "models",
        applies: models::applies,
        describe: |plan| {
            let n = plan.profile.models.len();
            vec![format!(
                "{n} locked Ollama models into its store ({})",
                crate::oci::ollama::MODELS_DIR
            )]
        },
        caching: Caching::Layer(|ctx| Ok(models::inputs(ctx.plan))),
        run: models::run,
    },
    Step {
        name: "initramfs",
        applies: always,
        describe: |plan| {
            let hw = &plan.profile.hardware;
            vec![match hw.initramfs {
                InitramfsKind::InitramfsTools => "initramfs-tools, inside the image".into(),
                InitramfsKind::Nodeforge => format!(
                    "busybox + modules [{}], written on the host",
                    hw.initramfs_modules.join(", ")
                ),
            }]
        },
        caching: Caching::Layer(|ctx| Ok(initrd::inputs(ctx.plan))),
        run: initrd::run,
    },
    Step {
        name: "esp",
        applies: uefi,
        describe: |plan| {
            vec![
                "systemd-boot, kernel, initrd, loader entry".into(),
                format!("FAT32 {}", plan.profile.disk.esp_size),
            ]
        },
        caching: Caching::Always,
        run: image::write_boot_partition,
    },
    Step {
        name: "boot-partition",
        applies: rpi,
        describe: |plan| {
            vec![
                "Pi firmware, device trees, config.txt, cmdline.txt, kernel, initrd".into(),
                format!("FAT32 {}", plan.profile.disk.esp_size),
            ]
        },
        caching: Caching::Always,
        run: image::write_boot_partition,
    },
    Step {
        name: "root-fs",
        applies: always,
        describe: |_| vec!["mkfs.ext4 -d".into()],
        caching: Caching::Always,
        run: image::write_root_fs,
    },
    Step {
        name: "partition-table",
        applies: always,
        describe: |plan| {
            vec![match plan.profile.hardware.firmware.table() {
                TableKind::Gpt if plan.layout.has_slots() => {
                    "GPT: esp, root-a, root-b (empty until an update), state".into()
                }
                TableKind::Gpt => "GPT: esp, root".into(),
                TableKind::Mbr => "MBR: boot (FAT32, active), root".into(),
            }]
        },
        caching: Caching::Always,
        run: image::write_partition_table,
    },
    Step {
        name: "qcow2",
        applies: |p| wants(p, OutputFormat::Qcow2),
        describe: |plan| vec![format!("qemu-img convert to {}.qcow2", plan.profile.name)],
        caching: Caching::Always,
        run: qcow2::run,
    },
    Step {
        name: "netboot",
        applies: |p| wants(p, OutputFormat::Netboot),
        describe: |plan| {
            let f = netboot::NetbootFiles::of(&plan.profile.name);
            vec![format!(
                "{}, {}, {}, {}",
                f.kernel, f.initrd, f.squashfs, f.script
            )]
        },
        caching: Caching::Always,
        run: netboot::run,
    },
    Step {
        name: "outputs",
        applies: always,
        describe: |plan| {
            let name = &plan.profile.name;
            vec![
                format!("{name}.img, {name}.img.bmap, {name}.img.sha256, {name}.manifest.json"),
                format!("{name}.root.chunks.json, {name}.release.json (signed with --signing-key)"),
            ]
        },
        caching: Caching::Always,
        run: outputs::run,
    },
];

/// The steps of `plan`'s build, in order.
pub fn for_plan(plan: &Plan) -> Vec<&'static Step> {
    STEPS.iter().filter(|s| (s.applies)(plan)).collect()
}

/// One step as `nodeforge plan` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StepPlan {
    pub name: &'static str,
    pub inputs: Vec<String>,
}

pub fn planned(plan: &Plan) -> Vec<StepPlan> {
    for_plan(plan)
        .into_iter()
        .map(|s| StepPlan {
            name: s.name,
            inputs: (s.describe)(plan),
        })
        .collect()
}

/// The plan with its steps: what `nodeforge plan` prints.
#[derive(Serialize)]
pub struct PlanReport<'a> {
    #[serde(flatten)]
    pub plan: &'a Plan,
    pub steps: Vec<StepPlan>,
}

impl<'a> PlanReport<'a> {
    pub fn new(plan: &'a Plan) -> Self {
        PlanReport {
            plan,
            steps: planned(plan),
        }
    }

    pub fn render(&self) -> String {
        let mut s = self.plan.render();
        s.push_str("steps\n");
        for st in &self.steps {
            s.push_str(&format!("  {:<16} {}\n", st.name, st.inputs.join("; ")));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(steps: &[&Step]) -> Vec<&'static str> {
        steps.iter().map(|s| s.name).collect()
    }

    #[test]
    fn step_names_are_unique() {
        let mut all: Vec<&str> = STEPS.iter().map(|s| s.name).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), STEPS.len());
    }

    /// The plan's list, the build's list and the progress count are one
    /// list: `planned` and `for_plan` (which `build()` runs and counts)
    /// both come from `STEPS`, filtered by `applies` only.
    #[test]
    fn plan_and_build_list_the_table_in_order() {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (profile, formats) in [
            ("profiles/base.toml", vec![]),
            (
                "profiles/base.toml",
                vec![OutputFormat::Qcow2, OutputFormat::Netboot],
            ),
            ("profiles/sentinel.toml", vec![]),
        ] {
            let mut plan = Plan::load(&repo.join(profile)).unwrap();
            plan.profile.outputs.extend(formats);
            let built = names(&for_plan(&plan));
            let shown: Vec<&str> = planned(&plan).iter().map(|s| s.name).collect();
            assert_eq!(built, shown, "{profile}");
            let table: Vec<&str> = STEPS
                .iter()
                .filter(|s| (s.applies)(&plan))
                .map(|s| s.name)
                .collect();
            assert_eq!(built, table, "{profile}");
            assert_eq!(built.first(), Some(&"rootfs"));
            assert_eq!(built.last(), Some(&"outputs"));
            let boot = if uefi(&plan) { "esp" } else { "boot-partition" };
            assert!(built.contains(&boot), "{profile}: {built:?}");
            for (format, step) in [
                (OutputFormat::Qcow2, "qcow2"),
                (OutputFormat::Netboot, "netboot"),
            ] {
                assert_eq!(
                    wants(&plan, format),
                    built.contains(&step),
                    "{profile}: {built:?}"
                );
            }
            let text = PlanReport::new(&plan).render();
            let listed: Vec<&str> = text
                .split_once("steps\n")
                .unwrap()
                .1
                .lines()
                .map(|l| l.split_whitespace().next().unwrap())
                .collect();
            assert_eq!(listed, built, "{profile}");
        }
    }
}

//! Benchmark behind benches/role-boot.sh: boots the base image and each
//! role with a stack (core, data, media: the fleet test's profiles and
//! stand-ins), one at a time, each in its own guest (TCG, 2 vCPUs, 2 GiB),
//! and prints one row per image: its name, the seconds from QEMU's start
//! to the agent's status line, each agent step's wall seconds and, inside
//! `containers`, the engine's start, `compose up` and the health wait.
//!
//! With `--real-size` the stacks' test images are padded to the public
//! images' compressed sizes (qemu_tests::real_size), and each row also
//! gives the image's container blobs and their unpacked size.
//!
//! Usage (as root): cargo run -p qemu-tests --example role_boot [--real-size] [NAME...]

use qemu_tests::stacks::{prepare_with, ImageSizes, FIRST_MACHINE, GOOD_KEY};

const IMAGES: &[(&str, &str, Option<u64>)] = &[
    ("base", "qemu-tests/profiles/role-base.toml", None),
    ("core", "qemu-tests/profiles/role-core.toml", None),
    ("data", "qemu-tests/profiles/role-data.toml", None),
    ("media", "qemu-tests/profiles/role-media.toml", Some(64)),
];

/// `engine E s, compose up U s, health H s` from the containers step's
/// detail, as (label, seconds).
fn container_phases(detail: &str) -> Vec<(String, String)> {
    let Some((_, times)) = detail.split_once("; ") else {
        return Vec::new();
    };
    times
        .split(", ")
        .filter_map(|t| {
            let (label, secs) = t.trim_end_matches(" s").rsplit_once(' ')?;
            Some((label.to_owned(), secs.to_owned()))
        })
        .collect()
}

fn row(name: &str, ready_secs: f64, status: &serde_json::Value) -> String {
    let mut cells = vec![name.to_owned(), format!("ready {ready_secs:.1}")];
    for s in status["steps"].as_array().into_iter().flatten() {
        let (Some(step), Some(ms)) = (s["name"].as_str(), s["wall_ms"].as_f64()) else {
            continue;
        };
        cells.push(format!("{step} {:.1}", ms / 1000.0));
        if step == "containers" {
            let detail = s["detail"].as_str().unwrap_or_default();
            for (label, secs) in container_phases(detail) {
                cells.push(format!("  {label} {secs}"));
            }
        }
    }
    cells.join(" | ")
}

fn main() {
    let mut wanted: Vec<String> = std::env::args().skip(1).collect();
    let sizes = match wanted.iter().position(|a| a == "--real-size") {
        Some(i) => {
            wanted.remove(i);
            ImageSizes::Public
        }
        None => ImageSizes::Small,
    };
    for name in &wanted {
        if !IMAGES.iter().any(|(n, _, _)| n == name) {
            eprintln!("role_boot: no image {name}; choose from base, core, data, media");
            std::process::exit(2);
        }
    }
    let mut rows = Vec::new();
    for (name, profile, data_disk) in IMAGES {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == name) {
            continue;
        }
        let mut node = prepare_with(profile, *data_disk, sizes);
        node.stamp(GOOD_KEY, &[]);
        let running = node.start(&format!("role-boot-{name}"), &FIRST_MACHINE);
        let state = node.status["state"].as_str().unwrap_or("?").to_owned();
        if state != "complete" {
            eprintln!("role_boot: {name} ended {state}: {:#}", node.status);
            std::process::exit(1);
        }
        let mut line = row(name, running.took.as_secs_f64(), &node.status);
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&node.manifest).expect("reading the build's manifest"),
        )
        .expect("the build's manifest is JSON");
        let c = &manifest["facts"]["containers"];
        let mib = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0) / 1048576.0;
        line += &format!(
            " | image data {:.0} MiB: container blobs {:.0} MiB, unpacked in the store {:.0} MiB",
            node.allocated as f64 / 1048576.0,
            mib(&c["blob_bytes"]),
            mib(&c["unpacked_bytes"])
        );
        rows.push(line);
        drop(running);
    }
    println!("image | seconds from QEMU start to ready | agent steps (wall s)");
    for r in rows {
        println!("{r}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn container_phases_come_from_the_step_detail() {
        let d = "2 stacks up, 5/5 services healthy, 5 images preloaded, none loaded; engine 8.3 s, compose up 85.8 s, health 7.7 s";
        let p = super::container_phases(d);
        assert_eq!(
            p,
            [("engine", "8.3"), ("compose up", "85.8"), ("health", "7.7")]
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
    }
}

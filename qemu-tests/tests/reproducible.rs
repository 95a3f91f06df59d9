//! One profile with every kind of output (a disk image, netboot files and
//! a stack whose image the build writes into the engine's store) built
//! twice from scratch (fresh caches, so mmdebstrap runs both times) gives
//! the same image and the same companion files, byte for byte; a third
//! build, from the first build's cached layers, gives the same image
//! again. No SOURCE_DATE_EPOCH and no snapshot: the epoch is the Debian
//! archive's Release date (#21, reproducible by default).

use nodeforge::build::{self, BuildOptions, Output, StepOutcome};
use nodeforge::plan::Plan;
use qemu_tests::{require_root, web_stack, workspace_root};

#[test]
fn built_twice_from_scratch_and_once_from_cached_layers_is_identical() {
    require_root();
    assert!(
        std::env::var_os("SOURCE_DATE_EPOCH").is_none(),
        "this test checks builds without SOURCE_DATE_EPOCH: unset it"
    );
    // Its Tailscale repository is the tests' local one (build_profile
    // writes it for the other tests; this one builds through the library).
    qemu_tests::test_apt::ensure().unwrap_or_else(|e| panic!("{e:#}"));
    let (_registry, _digest) = web_stack::serve_and_lock();
    let plan = Plan::load(&workspace_root().join(web_stack::PROFILE)).unwrap();
    let scratch = tempfile::tempdir_in(workspace_root().join("target")).unwrap();
    let opts = BuildOptions {
        output_dir: scratch.path().join("out"),
        cache_dir: scratch.path().join("cache"),
        output: Output::Human,
        no_cache: false,
        agent: None,
        offline: false,
        remote_cache: Default::default(),
        signing_key: None,
    };
    let (first, check) =
        build::verify_reproducible(&plan, &opts).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(first.image.is_file());
    let containers = first.steps.iter().find(|s| s.name == "containers").unwrap();
    assert!(
        matches!(containers.outcome, StepOutcome::Done),
        "the engine's store was not written: {:?}",
        containers.outcome
    );
    assert!(check.identical, "builds differ: {check:?}");
    let manifest = opts
        .output_dir
        .join(format!("{}.manifest.json", plan.profile.name));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    eprintln!(
        "reproducible: epoch {} from {}",
        manifest["epoch"], manifest["epoch_source"]
    );
    assert_eq!(manifest["epoch_source"]["from"], "archive", "{manifest:#}");
    assert!(manifest["epoch"].is_i64(), "{manifest:#}");
    assert!(check.differing_partitions.is_empty());
    // sha256, bmap, the release, the root slot's chunk index and the four
    // netboot files.
    assert_eq!(check.compared_files, 8, "{check:?}");

    let from_layers = BuildOptions {
        output_dir: scratch.path().join("out-from-layers"),
        ..opts
    };
    let third = build::build(&plan, &from_layers).unwrap_or_else(|e| panic!("{e:#}"));
    for name in ["rootfs", "system", "agent", "containers"] {
        let step = third.steps.iter().find(|s| s.name == name).unwrap();
        assert!(
            matches!(step.outcome, StepOutcome::Reused(_)),
            "{name}: {:?}",
            step.outcome
        );
    }
    assert_eq!(
        third.sha256, first.sha256,
        "the image from cached layers differs"
    );
}

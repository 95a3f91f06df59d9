//! The same profile built twice from scratch (fresh caches, so mmdebstrap
//! runs both times) gives the same image, byte for byte. Its own test
//! binary: it sets SOURCE_DATE_EPOCH for the process.

use nodeforge::build::{self, BuildOptions, Output};
use nodeforge::plan::Plan;
use qemu_tests::{require_root, workspace_root};

#[test]
fn base_built_twice_from_scratch_is_identical() {
    require_root();
    std::env::set_var("SOURCE_DATE_EPOCH", "1763600000");
    let plan = Plan::load(&workspace_root().join("profiles/base.toml")).unwrap();
    let scratch = tempfile::tempdir_in(workspace_root().join("target")).unwrap();
    let opts = BuildOptions {
        output_dir: scratch.path().join("out"),
        cache_dir: scratch.path().join("cache"),
        output: Output::Human,
        no_cache: false,
        agent: None,
        offline: false,
    };
    let (first, check) =
        build::verify_reproducible(&plan, &opts).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(first.image.is_file());
    assert!(check.identical, "builds differ: {check:?}");
    assert!(check.differing_partitions.is_empty());
}

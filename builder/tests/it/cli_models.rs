//! Ollama models (`[[models]]`) through the CLI: located name errors, the
//! plan, `nodeforge lock` against a real registry playing Ollama's, and a
//! build (on the fake cached rootfs) that bakes them into Ollama's store,
//! refusing unlocked ones before any step runs.

use crate::support::fake::{install_fake_rootfs, write_agent};
use crate::support::image::Ext4;
use crate::support::{require_root, Project};
use nodeforge::oci::Digest;

const PROFILE: &str =
    "name = \"m\"\nhardware = \"pc\"\n[disk]\nsize = \"800MiB\"\nesp_size = \"64MiB\"\n\n\
[[models]]\nname = \"MODEL\"\n";

/// A project whose profile `profiles/m.toml` bakes `model`.
fn project(model: &str) -> Project {
    let p = Project::new();
    p.write("profiles/m.toml", &PROFILE.replace("MODEL", model));
    write_agent(&p);
    p
}

#[test]
fn a_bad_model_name_is_located() {
    let p = project("Llama 3");
    p.fails(&["check", "profiles/m.toml"])
        .stderr_has(&["profiles/m.toml:8:8:", "model name `Llama 3` is not valid"]);
}

#[test]
fn plan_lists_models_and_whether_they_are_locked() {
    let p = project("llama3.2");
    p.ok(&["plan", "profiles/m.toml"]).stdout_has(&[
        "models     (into /var/lib/ollama/models, lock profiles/m.lock.toml)",
        "model llama3.2 -> NOT LOCKED: run `nodeforge lock`",
        "1 locked Ollama models into its store",
    ]);
}

#[test]
fn locked_models_are_baked_into_ollamas_store_and_unlocked_ones_refused() {
    require_root();
    let reg = crate::cli_stacks::registry();
    let p = project("llama3.2");
    install_fake_rootfs(&p, "profiles/m.toml");
    let build = ["build", "profiles/m.toml", "--output", "out", "--quiet"];
    let build = [&build[..], &["--agent", "agent", "--cache-dir", "cache"]].concat();

    let out = p.cmd(&build).fails();
    assert!(!out.stderr().contains("build step"), "{}", out.report());
    out.stderr_has(&[
        "the profile bakes 1 models but it has no lock file profiles/m.lock.toml",
        "run `nodeforge lock profiles/m.toml`",
    ]);

    let digest = reg
        .push_ollama_model("library/llama3.2", "latest", b"GGUF stand-in")
        .unwrap();
    let mirror = format!("registry.ollama.ai=http://{}", reg.addr);
    p.ok(&["lock", "profiles/m.toml", "--mirror", &mirror]);
    let lock = p.read("profiles/m.lock.toml");
    assert!(
        lock.contains(&format!(
            "[[models]]\nname = \"llama3.2\"\ndigest = \"{digest}\""
        )),
        "{lock}"
    );
    p.cmd(&build).ok();
    let root = Ext4::root_of(&p.path("out/m.img"), p.root());
    let manifest =
        root.file("/var/lib/ollama/models/manifests/registry.ollama.ai/library/llama3.2/latest");
    assert_eq!(Digest::of(&manifest), digest);
    let weights = Digest::of(b"GGUF stand-in");
    assert_eq!(
        root.file(&format!(
            "/var/lib/ollama/models/blobs/sha256-{}",
            weights.hex()
        )),
        b"GGUF stand-in"
    );
}

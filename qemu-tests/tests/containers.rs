//! A role stack end to end: the test builds a small busybox-httpd image,
//! pushes it to a real registry (Debian's docker-registry on loopback),
//! locks the profile against it, builds the image, stops the registry, and
//! boots the node in QEMU. The build wrote the image into the engine's own
//! store, so at first boot the agent loads nothing and starts the stack
//! with no registry anywhere; the service answers on
//! its forwarded port and status.json reports it healthy.

use std::net::TcpListener;
use std::time::Duration;

use nodeforge::boot::{Vm, VmOptions};
use qemu_tests::web_stack::{serve_and_lock, INDEX, PORT, PROFILE};
use qemu_tests::{build_profile, require_root, vm_slot, STATUS_MARKER};

#[test]
fn stack_starts_offline_at_first_boot_and_answers_on_its_port() {
    require_root();
    let (registry, digest) = serve_and_lock();

    let built = build_profile(PROFILE);
    // From here on no registry exists: the node must come up without one.
    drop(registry);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&built.manifest).unwrap()).unwrap();
    let c = &manifest["facts"]["containers"];
    eprintln!(
        "container images: {} bytes of blobs, {} bytes unpacked in the engine's store",
        c["blob_bytes"], c["unpacked_bytes"]
    );
    assert_eq!(c["images"][0]["digest"], digest.to_string());

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _slot = vm_slot();
    let opts = VmOptions {
        forwards: vec![(port, PORT)],
        memory_mb: 2048,
        ..VmOptions::new(&built.image)
    };
    let mut vm = Vm::start(&opts).unwrap_or_else(|e| panic!("starting the guest: {e:#}"));
    let took = vm
        .wait_for(STATUS_MARKER, Duration::from_secs(900))
        .unwrap_or_else(|e| panic!("{e}"));
    // The line is written at once; give the log a moment to hold all of it.
    std::thread::sleep(Duration::from_secs(1));
    let console = vm.console();
    let status = qemu_tests::console_status(&console);
    eprintln!(
        "first boot finished after {:.1}s: {status:#}",
        took.as_secs_f64()
    );
    assert_eq!(status["state"], "complete", "{status:#}");
    let step = status["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "containers")
        .expect("a containers step");
    assert_eq!(step["state"], "done", "{step:#}");
    assert!(
        step["detail"]
            .as_str()
            .unwrap()
            .contains("1/1 services healthy, 1 images preloaded, none loaded"),
        "{step:#}"
    );
    let web = &status["services"][0];
    assert_eq!(web["stack"], "web");
    assert_eq!(web["service"], "web");
    assert_eq!(web["state"], "healthy", "{web:#}");
    assert_eq!(web["health"], "healthy", "{web:#}");
    assert_eq!(web["probe"], "http http://127.0.0.1:8080/");
    assert!(console.contains(nodeforge_firstboot::READY_MARKER));

    let body = nodeforge_firstboot::http::get(
        &format!("http://127.0.0.1:{port}/"),
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("GET the stack's service through the forward: {e:#}"));
    assert_eq!(String::from_utf8_lossy(&body), INDEX);
    vm.kill();
}

//! The builder's integration tests, one binary (one link instead of one per
//! file): each module is one area, run alone with
//! `cargo test -p nodeforge --test it MODULE::`. What they share is in
//! [`support`].

mod support;

mod alerting;
mod backup;
mod cli_apt;
mod cli_build;
mod cli_build_apt;
mod cli_build_epoch;
mod cli_build_hardware;
mod cli_build_rpi;
mod cli_docs;
mod cli_firewall;
mod cli_json;
mod cli_keys;
mod cli_models;
mod cli_profiles;
mod cli_stacks;
mod cli_storage;
mod cli_tailnet;
mod flash_bmaptool;
mod flash_file;
mod flash_loop;
mod flash_oci;
mod flash_safety;
mod flash_seed;
mod nmap_scan;
mod nvidia;
mod remote_cache;
mod roles;
mod serve;
mod workflow;

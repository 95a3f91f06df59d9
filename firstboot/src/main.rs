use std::process::ExitCode;

use nodeforge_firstboot::config::{BakedConfig, BAKED_CONFIG_PATH};

fn main() -> ExitCode {
    let text = match std::fs::read_to_string(BAKED_CONFIG_PATH) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("nodeforge-firstboot: reading {BAKED_CONFIG_PATH}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = match BakedConfig::from_toml(&text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nodeforge-firstboot: parsing {BAKED_CONFIG_PATH}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{} (role {}, profile {})",
        nodeforge_firstboot::READY_MARKER,
        cfg.role,
        cfg.profile
    );
    ExitCode::SUCCESS
}

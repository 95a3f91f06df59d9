//! nodeforge-firstboot: the agent baked into every nodeforge image.
//!
//! This crate owns the formats shared between the image builder and the
//! agent (the baked config and the per-node seed), so both sides use one
//! schema. It never depends on the builder.

pub mod config;

/// The line the agent prints on the console once the node is ready.
/// Boot tests and `nodeforge boot` wait for it.
pub const READY_MARKER: &str = "nodeforge-firstboot: ready";

/// The systemd unit that runs the agent at boot.
pub const SYSTEMD_UNIT: &str = include_str!("../units/nodeforge-firstboot.service");

//! nodeforge-firstboot: the agent baked into every nodeforge image.
//!
//! This crate owns the formats shared between the image builder and the
//! agent (the baked config and the per-node seed), so both sides use one
//! schema. It never depends on the builder.
//!
//! The agent ([`agent::Agent`]) runs the steps in [`steps::Step::ALL`]
//! against a root directory ("/" on a node, a temp dir in tests), with every
//! external program going through [`runner::CommandRunner`].

pub mod agent;
pub mod backup;
pub mod config;
pub mod disks;
pub mod fsutil;
pub mod http;
pub mod identity;
pub mod journal;
pub mod notify;
pub mod redact;
pub mod runner;
pub mod seed;
pub mod slots;
pub mod stacks;
pub mod status;
pub mod steps;
pub mod tailscale;
#[cfg(test)]
mod testutil;
pub mod text;
pub mod update;

/// The line the agent prints on the console once the node is ready.
/// Boot tests and `nodeforge boot` wait for it.
pub const READY_MARKER: &str = "nodeforge-firstboot: ready";

/// The unit that blesses (or rejects) a root slot on trial, installed and
/// enabled on images with A/B slots.
pub const ASSESS_UNIT: &str = include_str!("../units/nodeforge-assess.service");
pub const ASSESS_UNIT_NAME: &str = "nodeforge-assess.service";
pub const ASSESS_UNIT_PATH: &str = "/usr/lib/systemd/system/nodeforge-assess.service";

/// The updater on a timer, on images with A/B slots and an `[update] url`.
pub const UPDATE_SERVICE: &str = include_str!("../units/nodeforge-update.service");
pub const UPDATE_SERVICE_PATH: &str = "/usr/lib/systemd/system/nodeforge-update.service";
pub const UPDATE_TIMER: &str = include_str!("../units/nodeforge-update.timer");
pub const UPDATE_TIMER_NAME: &str = "nodeforge-update.timer";
pub const UPDATE_TIMER_PATH: &str = "/usr/lib/systemd/system/nodeforge-update.timer";

/// The systemd unit the builder installs as [`SYSTEMD_UNIT_PATH`] (enabled
/// in multi-user.target); the binary goes to [`BINARY_PATH`].
pub const SYSTEMD_UNIT: &str = include_str!("../units/nodeforge-firstboot.service");

/// Path of the unit inside the image.
pub const SYSTEMD_UNIT_PATH: &str = "/usr/lib/systemd/system/nodeforge-firstboot.service";

/// Where the builder installs the agent binary inside the image.
pub const BINARY_PATH: &str = "/usr/bin/nodeforge-firstboot";

/// The drop-in the builder adds to tailscaled.service, at
/// [`TAILSCALED_DROPIN_PATH`]: the identity check runs before the daemon.
pub const TAILSCALED_DROPIN: &str = include_str!("../units/tailscaled-identity.conf");
pub const TAILSCALED_DROPIN_PATH: &str =
    "/etc/systemd/system/tailscaled.service.d/nodeforge-identity.conf";

/// The stand-in `tailscale` CLI for tests (POSIX sh). Boot tests install
/// it as `/usr/bin/tailscale` in images, since the real client cannot be
/// installed on the build machines.
pub const TAILSCALE_STANDIN: &str = include_str!("../testdata/tailscale-standin");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_is_ordered_and_notifies() {
        for needle in [
            "Type=notify",
            "After=network-online.target tailscaled.service",
            "Wants=network-online.target",
            "StandardOutput=journal+console",
            "ExecStart=/usr/bin/nodeforge-firstboot",
            "WantedBy=multi-user.target",
        ] {
            assert!(SYSTEMD_UNIT.contains(needle), "unit lacks {needle}");
        }
        assert!(
            !SYSTEMD_UNIT.contains("getty"),
            "must not hold up the console"
        );
    }
}

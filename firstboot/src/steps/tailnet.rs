//! Join the tailnet, state first: only a logged-out node runs `tailscale up`,
//! so a re-run after the join (even one cut short before the journal was
//! written) never uses the one-off key twice.

use std::time::Duration;

use anyhow::{Context, Result};

use super::{Ctx, Outcome};
use crate::fsutil::{atomic_write, read_optional, shred_and_remove, under};
use crate::identity;
use crate::runner::Cmd;
use crate::tailscale::{self, TailscaleError, TsState, TsStatus};

/// The only place the key is written while it is needed: /run is tmpfs.
pub const AUTHKEY_RUN_PATH: &str = "/run/nodeforge/tailscale-authkey";

/// How often the agent looks at the backend state while it settles.
const POLLS: u32 = 15;
const NOSTATE_POLLS: u32 = 3;

pub fn join(ctx: &mut Ctx<'_>) -> Result<Outcome> {
    let Some(tcfg) = ctx.cfg.tailscale.clone() else {
        return Ok(Outcome::Skipped("the profile configures no tailnet".into()));
    };
    let host = ctx.hostname().to_string();
    match settled_status(ctx)?.state() {
        TsState::Joined(ip) => {
            // Keeps the tailnet name in line with a seed hostname; `set`
            // is idempotent and needs no key.
            ctx.runner.run(
                &Cmd::new(ctx.tailscale_bin)
                    .arg("set")
                    .arg(format!("--hostname={host}")),
            )?;
            if !identity::recorded(ctx.root) {
                identity::record(ctx.root)?;
            }
            ctx.notes.tailscale_ip = Some(ip.clone());
            return Ok(Outcome::Skipped(format!("already on the tailnet as {ip}")));
        }
        TsState::NeedsApproval => {
            return Err(TailscaleError::Other(
                "logged in but the device awaits approval in the admin console".into(),
            )
            .into())
        }
        TsState::Starting => {
            return Err(
                TailscaleError::Timeout("tailscaled stayed in a starting state".into()).into(),
            )
        }
        TsState::LoggedOut => {}
    }

    let cloned = identity::cloned(ctx.root)?;
    let key = match (&ctx.seed.tailscale_auth_key, &cloned) {
        (Some(k), _) => k,
        (None, Some(c)) => {
            return Err(TailscaleError::ClonedDisk(format!(
                "joined on {}, now on {}",
                c.joined_on.describe(),
                c.now_on.describe()
            ))
            .into())
        }
        (None, None) => return Err(TailscaleError::NoAuthKey.into()),
    };
    let key_path = under(ctx.root, AUTHKEY_RUN_PATH);
    ensure_memory_backed(ctx)?;
    atomic_write(&key_path, key.expose().as_bytes(), 0o600)
        .with_context(|| format!("writing the auth key to {}", key_path.display()))?;

    let mut cmd = Cmd::new(ctx.tailscale_bin)
        .arg("up")
        .arg("--reset")
        .arg(format!("--auth-key=file:{}", key_path.display()))
        .arg(format!("--hostname={host}"));
    let tags = ctx.tags();
    if !tags.is_empty() {
        cmd = cmd.arg(format!("--advertise-tags={}", tags.join(",")));
    }
    // `--reset` puts every setting not given back to its default (off):
    // the fleet's settings are given each time.
    if tcfg.accept_routes {
        cmd = cmd.arg("--accept-routes");
    }
    if tcfg.ssh {
        cmd = cmd.arg("--ssh");
    }
    if !tcfg.advertise_routes.is_empty() {
        cmd = cmd.arg(format!(
            "--advertise-routes={}",
            tcfg.advertise_routes.join(",")
        ));
    }
    cmd = cmd
        .arg(format!("--timeout={}s", tcfg.timeout_secs))
        .timeout(Duration::from_secs(tcfg.timeout_secs + 30));
    let result = ctx.runner.output(&cmd);
    // The key file is needed only by `up`: remove it whatever happened.
    shred_and_remove(&key_path)?;
    let out = result.map_err(|e| TailscaleError::Other(e.to_string()))?;
    if !out.success() {
        return Err(tailscale::classify(&out.stderr, out.timed_out).into());
    }

    match settled_status(ctx)?.state() {
        TsState::Joined(ip) => {
            identity::record(ctx.root)?;
            ctx.notes.tailscale_ip = Some(ip.clone());
            let tags = crate::text::join_or(&tags, ",", "no tags");
            Ok(Outcome::Done(format!(
                "joined as {host} ({ip}) with {tags}"
            )))
        }
        TsState::NeedsApproval => Err(TailscaleError::Other(
            "joined but the device awaits approval in the admin console".into(),
        )
        .into()),
        TsState::LoggedOut | TsState::Starting => Err(TailscaleError::Timeout(
            "`tailscale up` returned but the node is not Running with an address".into(),
        )
        .into()),
    }
}

/// `tailscale status --json`, polled while tailscaled is still starting or
/// not yet answering (it is ordered before us but may still be busy).
fn settled_status(ctx: &Ctx<'_>) -> Result<TsStatus, TailscaleError> {
    let mut last = None;
    for i in 0..POLLS {
        if i > 0 {
            (ctx.sleep)(Duration::from_millis(500 * u64::from(i.min(4))));
        }
        match tailscale::status(ctx.runner, ctx.tailscale_bin) {
            Ok(s) if s.state() == TsState::Starting => last = Some(Ok(s)),
            // NoState right after tailscaled starts may still turn into
            // Running from saved state; give it a moment before treating
            // the node as logged out and spending the key.
            Ok(s) if s.backend_state == "NoState" && i < NOSTATE_POLLS => last = Some(Ok(s)),
            Ok(s) => return Ok(s),
            Err(e) => last = Some(Err(e)),
        }
    }
    last.unwrap_or_else(|| Err(TailscaleError::Other("no status".into())))
}

/// Refuses to put the key on a disk-backed /run (it must vanish on power
/// loss). Skipped for test roots that do not fake /proc.
fn ensure_memory_backed(ctx: &Ctx<'_>) -> Result<()> {
    let mi = under(ctx.root, "/proc/self/mountinfo");
    let Some(text) = read_optional(&mi)? else {
        if ctx.live {
            anyhow::bail!(
                "cannot read {} to check that /run is in memory",
                mi.display()
            );
        }
        return Ok(());
    };
    let target = "/run/nodeforge";
    let best = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dash = f.iter().position(|x| *x == "-")?;
            let mp = *f.get(4)?;
            let inside =
                target == mp || target.starts_with(&format!("{}/", mp.trim_end_matches('/')));
            inside.then(|| (mp.len(), f.get(dash + 1).copied().unwrap_or("")))
        })
        .max_by_key(|(len, _)| *len);
    match best {
        Some((_, "tmpfs" | "ramfs")) => Ok(()),
        Some((_, fs)) => anyhow::bail!(
            "{target} is on {fs}, not in memory: refusing to write the auth key there"
        ),
        None => anyhow::bail!("no mount covers {target}"),
    }
}

//! Step `backup-repository`: a seed that names a restic repository
//! (`backup_repository`, from the fleet file or `--backup-repository`)
//! points this node's backups there instead of the image's own
//! (overlays/backup's `vars.backup_repository`), so one role image backs
//! up each machine where its fleet keeps backups. The backup script reads
//! [`REPOSITORY_PATH`] over the baked value.

use anyhow::{Context, Result};

use super::{Ctx, Outcome};
use crate::backup::{BACKUP_CONF_PATH, REPOSITORY_PATH};
use crate::fsutil::{atomic_write, read_optional, under};
use crate::stacks::parse_env_file;

pub fn backup_repository(ctx: &mut Ctx<'_>) -> Result<Outcome> {
    let baked = read_optional(&under(ctx.root, BACKUP_CONF_PATH))?
        .map(|t| parse_env_file(&t))
        .and_then(|env| env.get("BACKUP_REPOSITORY").cloned());
    let Some(baked) = baked else {
        return Ok(Outcome::Skipped(match &ctx.seed.backup_repository {
            Some(r) => format!(
                "the seed names backup repository {r}, but this image makes no backups \
                 (no overlays/backup): nothing uses it"
            ),
            None => "this image makes no backups".into(),
        }));
    };
    let Some(repo) = &ctx.seed.backup_repository else {
        return Ok(Outcome::Skipped(format!(
            "backups go to the image's repository {baked}"
        )));
    };
    atomic_write(
        &under(ctx.root, REPOSITORY_PATH),
        format!("{repo}\n").as_bytes(),
        0o644,
    )
    .context("writing the seed's backup repository")?;
    Ok(Outcome::Done(format!(
        "backups go to {repo} (the seed's), not the image's {baked}"
    )))
}

//! Reading a profile's `extends` chain and merging it, parent first.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::apt;
use super::error::{ProfileError, ProfileErrors};
use super::file::{HardwareFile, OutputFormat, ProfileFile};
use super::storage;
use super::tailnet;
use super::validate::{self, FileCtx};
use super::STACK_PACKAGES;
use super::{ByteSize, Debian, Disk, Hardware, Overlay, Profile, Stack, User};

const DEFAULT_SUITE: &str = "trixie";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const SNAPSHOT_ARCHIVE: &str = "http://snapshot.debian.org/archive/debian";
const DEFAULT_DISK: ByteSize = ByteSize(2 << 30);
const DEFAULT_ESP: ByteSize = ByteSize(256 << 20);
const DEFAULT_TAILSCALE_TIMEOUT: u64 = 60;
/// An extends chain longer than this is a mistake, not a design.
const MAX_CHAIN: usize = 16;

/// Loads `path`, follows its `extends` chain, merges and validates it,
/// without its fleet (see [`super::members::load`]). All problems found are
/// reported together, each naming file and line.
pub fn load_alone(path: &Path) -> Result<Profile, ProfileErrors> {
    let chain = read_chain(path).map_err(|e| ProfileErrors(vec![e]))?;
    let mut errors = Vec::new();
    let mut merged = Merged::default();
    for (ctx, file) in &chain {
        merged.apply(ctx, file, &mut errors);
    }
    // The profile itself: only fragments it includes come after it.
    let leaf = &chain
        .iter()
        .rev()
        .find(|(c, _)| c.path == path)
        .unwrap_or_else(|| {
            chain
                .last()
                .expect("chain holds at least the profile itself")
        })
        .0;
    // Every file read, the profile itself last (its lock file sits beside
    // it; fragments it includes come before it).
    let mut sources: Vec<PathBuf> = chain
        .iter()
        .map(|(c, _)| c.path.clone())
        .filter(|p| p != &leaf.path)
        .collect();
    sources.push(leaf.path.clone());
    let profile = merged.finish(leaf, sources, &mut errors);
    match profile {
        Some(p) if errors.is_empty() => Ok(p),
        _ => Err(ProfileErrors(errors)),
    }
}

/// Reads the profile and every profile it extends, root of the chain first.
fn read_chain(path: &Path) -> Result<Vec<(FileCtx, ProfileFile)>, ProfileError> {
    let mut chain: Vec<(FileCtx, ProfileFile)> = Vec::new();
    let mut next = Some(path.to_owned());
    while let Some(p) = next.take() {
        let ctx = FileCtx::read(&p)?;
        let canonical = fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
        let file: ProfileFile = toml::from_str(&ctx.source)
            .map_err(|e| ProfileError::from_toml(&ctx.path, &ctx.source, &e))?;
        if let Some(ext) = &file.extends {
            let target = ctx.dir().join(ext.get_ref());
            let target_canon = fs::canonicalize(&target).map_err(|e| {
                let why = format!("cannot read {}: {e}", target.display());
                reference_error(&ctx, "extends", ext, why)
            })?;
            let seen = chain
                .iter()
                .map(|(c, _)| fs::canonicalize(&c.path).unwrap_or_else(|_| c.path.clone()))
                .chain(std::iter::once(canonical.clone()));
            if seen.into_iter().any(|s| s == target_canon) {
                let names: Vec<String> = chain
                    .iter()
                    .map(|(c, _)| c.path.display().to_string())
                    .chain([ctx.path.display().to_string(), target.display().to_string()])
                    .collect();
                return Err(ctx.error_at(ext, format!("extends cycle: {}", names.join(" -> "))));
            }
            if chain.len() + 1 >= MAX_CHAIN {
                return Err(ctx.error_at(
                    ext,
                    format!("extends chain is longer than {MAX_CHAIN} profiles"),
                ));
            }
            next = Some(target);
        }
        // Reversed below: the file, then its fragments in order.
        let fragments = read_includes(&ctx, &file)?;
        chain.extend(fragments.into_iter().rev());
        chain.push((ctx, file));
    }
    chain.reverse();
    Ok(chain)
}

/// An error at a reference to another file (`extends`, `include`): the key
/// and its value, then why that file cannot be used.
fn reference_error(ctx: &FileCtx, key: &str, value: &Spanned<String>, why: String) -> ProfileError {
    ctx.error_at(value, format!("{key} `{}`: {why}", value.get_ref()))
}

/// The fragments `file` includes, in order.
fn read_includes(
    ctx: &FileCtx,
    file: &ProfileFile,
) -> Result<Vec<(FileCtx, ProfileFile)>, ProfileError> {
    let mut out = Vec::new();
    for inc in &file.include {
        let target = ctx.dir().join(inc.get_ref());
        let fctx = FileCtx::read(&target).map_err(|e| {
            let why = format!("{}: {}", target.display(), e.message);
            reference_error(ctx, "include", inc, why)
        })?;
        let fragment: ProfileFile = toml::from_str(&fctx.source)
            .map_err(|e| ProfileError::from_toml(&fctx.path, &fctx.source, &e))?;
        if let Some(x) = fragment.extends.as_ref().or(fragment.include.first()) {
            return Err(fctx.error_at(
                x,
                "an included fragment may not extend or include: put that in the profile",
            ));
        }
        out.push((fctx, fragment));
    }
    Ok(out)
}

/// The profile as merged so far: a child's scalars replace its parent's,
/// lists are joined (users by name), tables merged key by key.
#[derive(Default)]
struct Merged {
    name: Option<String>,
    role: Option<String>,
    description: Option<String>,
    hostname: Option<String>,
    hardware: Option<Hardware>,
    suite: Option<String>,
    mirror: Option<String>,
    snapshot: Option<String>,
    components: Option<Vec<String>>,
    apt: super::Apt,
    packages: Vec<String>,
    overlays: Vec<Overlay>,
    users: Vec<User>,
    disk_size: Option<(ByteSize, FileCtx, Spanned<ByteSize>)>,
    esp_size: Option<ByteSize>,
    outputs: Option<Vec<OutputFormat>>,
    vars: BTreeMap<String, serde_json::Value>,
    tailscale: Option<super::Tailscale>,
    tailnet: super::Tailnet,
    stacks: Vec<Stack>,
    models: Vec<String>,
    storage: Vec<nodeforge_firstboot::config::StorageRule>,
    firewall: Option<super::Firewall>,
    release_key: Option<String>,
    update_url: Option<String>,
    update_tries: Option<u32>,
}

impl Merged {
    fn apply(&mut self, ctx: &FileCtx, f: &ProfileFile, errors: &mut Vec<ProfileError>) {
        set(&mut self.name, f.name.clone());
        set(&mut self.role, f.role.clone());
        set(&mut self.description, f.description.clone());
        if let Some(h) = &f.hostname {
            if let Some(h) = ctx.checked(h, validate::hostname, errors) {
                self.hostname = Some(h);
            }
        }
        if let Some(hw) = &f.hardware {
            if let Some(h) = load_hardware(ctx, hw, errors) {
                self.hardware = Some(h);
            }
        }
        if let Some(d) = &f.debian {
            set(&mut self.suite, d.suite.clone());
            if let Some(m) = &d.mirror {
                if let Some(m) = ctx.checked(m, validate::mirror, errors) {
                    self.mirror = Some(m);
                }
            }
            if let Some(s) = &d.snapshot {
                match crate::build::reproducible::snapshot_epoch(s.get_ref()) {
                    Ok(_) => self.snapshot = Some(s.get_ref().clone()),
                    Err(e) => errors.push(ctx.error_at(s, e.to_string())),
                }
            }
            if let Some(cs) = &d.components {
                let comps = cs
                    .iter()
                    .filter_map(|c| ctx.checked(c, validate::component, errors))
                    .collect();
                self.components = Some(comps);
            }
        }
        if let Some(a) = &f.apt {
            apt::merge(ctx, a, &mut self.apt, errors);
        }
        for p in &f.packages {
            if let Some(p) = ctx.checked(p, validate::package_name, errors) {
                push_unique(&mut self.packages, p);
            }
        }
        for o in &f.overlays {
            match ctx.find_dir("overlays", o) {
                Ok(dir) => {
                    if !self.overlays.iter().any(|x| x.dir == dir) {
                        self.overlays.push(Overlay {
                            name: o.get_ref().clone(),
                            dir,
                        });
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        for u in &f.users {
            match validate::user(ctx, u) {
                Ok(user) => {
                    self.users.retain(|x| x.name != user.name);
                    self.users.push(user);
                }
                Err(mut es) => errors.append(&mut es),
            }
        }
        if let Some(d) = &f.disk {
            if let Some(s) = &d.size {
                self.disk_size = Some((*s.get_ref(), ctx.clone(), s.clone()));
            }
            if let Some(s) = &d.esp_size {
                self.esp_size = Some(*s.get_ref());
            }
        }
        if let Some(o) = &f.outputs {
            set(&mut self.outputs, o.formats.clone());
        }
        for (k, v) in &f.vars {
            self.vars.insert(k.clone(), toml_to_json(v));
        }
        if let Some(t) = &f.tailscale {
            self.tailscale = Some(tailnet::tailscale(
                ctx,
                t,
                DEFAULT_TAILSCALE_TIMEOUT,
                errors,
            ));
        }
        if let Some(t) = &f.tailnet {
            tailnet::settings(ctx, t, &mut self.tailnet, errors);
        }
        storage::merge(ctx, &f.storage, &mut self.storage, errors);
        if let Some(fw) = &f.firewall {
            firewall(
                ctx,
                fw,
                self.firewall.get_or_insert_with(Default::default),
                errors,
            );
        }
        if let Some(u) = &f.update {
            if let Some(k) = super::apt::release_key(ctx, &u.key, errors) {
                self.release_key = Some(k);
            }
            if let Some(tries) = &u.tries {
                let max = nodeforge_firstboot::slots::MAX_TRIES;
                if (1..=max).contains(tries.get_ref()) {
                    self.update_tries = Some(*tries.get_ref());
                } else {
                    errors.push(ctx.error_at(
                        tries,
                        format!(
                            "[update] tries = {}: give 1 to {max} (each failed try is a whole boot \
                             before the node falls back to its other slot)",
                            tries.get_ref()
                        ),
                    ));
                }
            }
            if let Some(url) = &u.url {
                // The node's client speaks plain HTTP; the release's
                // signature, not the transport, is what it trusts.
                if url.get_ref().starts_with("http://") && url.get_ref().len() > 7 {
                    self.update_url = Some(url.get_ref().clone());
                } else {
                    errors.push(ctx.error_at(
                        url,
                        format!(
                            "[update] url `{}`: give the build's directory as http://HOST[:PORT]/PATH \
                             (the node fetches over plain HTTP and trusts the release's signature)",
                            url.get_ref()
                        ),
                    ));
                }
            }
        }
        for x in &f.exclude_stacks {
            if !self.stacks.iter().any(|s| &s.name == x.get_ref()) {
                errors.push(ctx.error_at(
                    x,
                    format!(
                        "exclude_stacks names `{}`, which no profile this one extends declares",
                        x.get_ref()
                    ),
                ));
            }
            self.stacks.retain(|s| &s.name != x.get_ref());
        }
        for m in &f.models {
            match crate::oci::ollama::ModelName::parse(m.name.get_ref()) {
                Ok(_) if self.models.contains(m.name.get_ref()) => {}
                Ok(_) => self.models.push(m.name.get_ref().clone()),
                Err(e) => errors.push(ctx.error_at(&m.name, format!("{e:#}"))),
            }
        }
        let mut names = Vec::new();
        for st in &f.stacks {
            if names.contains(st.name.get_ref()) {
                errors.push(ctx.error_at(
                    &st.name,
                    format!(
                        "stack `{}` is declared twice in this file",
                        st.name.get_ref()
                    ),
                ));
                continue;
            }
            names.push(st.name.get_ref().clone());
            match validate::stack(ctx, st) {
                // A child's stack replaces its parent's stack of that name.
                Ok(stack) => {
                    self.stacks.retain(|x| x.name != stack.name);
                    self.stacks.push(stack);
                }
                Err(mut es) => errors.append(&mut es),
            }
        }
    }

    fn finish(
        self,
        leaf: &FileCtx,
        sources: Vec<PathBuf>,
        errors: &mut Vec<ProfileError>,
    ) -> Option<Profile> {
        let mut missing = |what: &str, hint: &str| {
            errors.push(ProfileError::whole_file(
                &leaf.path,
                format!("no `{what}` in this profile or any it extends: {hint}"),
            ))
        };
        let name = self.name.or_else(|| {
            missing("name", "add e.g. name = \"core\"");
            None
        });
        let hardware = self.hardware.or_else(|| {
            missing(
                "hardware",
                "add e.g. hardware = \"x86-64-uefi\" (a file in hardware/)",
            );
            None
        });
        let (name, hardware) = (name?, hardware?);
        let disk = Disk {
            size: self.disk_size.as_ref().map(|d| d.0).unwrap_or(DEFAULT_DISK),
            esp_size: self.esp_size.unwrap_or(DEFAULT_ESP),
        };
        if let Err(msg) = validate::disk(&disk) {
            match &self.disk_size {
                Some((_, ctx, span)) => errors.push(ctx.error_at(span, msg)),
                None => errors.push(ProfileError::whole_file(&leaf.path, msg)),
            }
        }
        if !self.stacks.is_empty() {
            let have = |p: &&str| {
                self.packages.iter().any(|x| x == p) || hardware.packages.iter().any(|x| x == p)
            };
            let missing: Vec<&str> = STACK_PACKAGES
                .iter()
                .filter(|p| !have(p))
                .copied()
                .collect();
            if !missing.is_empty() {
                errors.push(ProfileError::whole_file(
                    &leaf.path,
                    format!(
                        "the profile has stacks but its packages lack {}: the image needs the \
                         Docker engine, its CLI and the compose plugin (add them to `packages`)",
                        missing.join(", ")
                    ),
                ));
            }
        }
        let have = |p: &&str| {
            self.packages.iter().any(|x| x == p) || hardware.packages.iter().any(|x| x == p)
        };
        // Without the client the node never joins, and its stacks wait
        // on real hardware for a step that cannot succeed.
        if self.tailscale.is_some() {
            if !have(&"tailscale") {
                errors.push(ProfileError::whole_file(
                    &leaf.path,
                    "the profile joins a tailnet ([tailscale]) but does not install the client: \
                     add \"tailscale\" to `packages` with Tailscale's repository (extend \
                     profiles/node.toml, which has both)",
                ));
            } else if !self.apt.repositories.iter().any(|r| r.name == "tailscale") {
                errors.push(ProfileError::whole_file(
                    &leaf.path,
                    "the profile installs `tailscale` but names no `tailscale` repository: Debian \
                     does not package the client (see profiles/node.toml)",
                ));
            }
        }
        // Slots boot by `root=PARTUUID=`, which initramfs-tools resolves;
        // nodeforge's own initramfs finds the root by filesystem UUID (the
        // same in both slots), and the Pi's firmware has its own A/B.
        if self.release_key.is_some()
            && (hardware.firmware != super::Firmware::Uefi
                || hardware.initramfs != super::InitramfsKind::InitramfsTools)
        {
            errors.push(ProfileError::whole_file(
                &leaf.path,
                format!(
                    "[update] gives the image two root slots, which nodeforge builds for UEFI \
                     machines with initramfs-tools; hardware `{}` has neither (a Raspberry Pi's \
                     firmware switches slots only with Raspberry Pi's own kernel, see \
                     docs/ab-updates.md): remove [update] from this profile",
                    hardware.name
                ),
            ));
        }
        if self.firewall.is_some() && !have(&"nftables") {
            errors.push(ProfileError::whole_file(
                &leaf.path,
                "the profile has a [firewall] but does not install nftables: add \"nftables\" \
                 to `packages` (the unit loads the rules with nft)",
            ));
        }
        let lacking: Vec<&str> = storage::needed_packages(&self.storage)
            .into_iter()
            .filter(|p| !have(p))
            .collect();
        if !lacking.is_empty() {
            errors.push(ProfileError::whole_file(
                &leaf.path,
                format!(
                    "the profile has storage rules but its packages (and its hardware's) lack {}: \
                     the agent partitions and formats with them (use hardware = \"storage\" or add them)",
                    lacking.join(", ")
                ),
            ));
        }
        let apt = with_hardware_apt(&hardware, self.apt);
        let overlays = hardware_then_profile(&hardware.overlays, self.overlays, |o| &o.dir);
        Some(Profile {
            role: self.role.unwrap_or_else(|| name.clone()),
            hostname: self.hostname.unwrap_or_else(|| name.clone()),
            description: self.description.unwrap_or_default(),
            name,
            sources,
            hardware,
            debian: Debian {
                suite: self.suite.unwrap_or_else(|| DEFAULT_SUITE.into()),
                mirror: match (&self.snapshot, self.mirror) {
                    (Some(ts), _) => format!("{SNAPSHOT_ARCHIVE}/{ts}/"),
                    (None, m) => m.unwrap_or_else(|| DEFAULT_MIRROR.into()),
                },
                snapshot: self.snapshot,
                components: self.components.unwrap_or_else(|| vec!["main".into()]),
            },
            apt,
            packages: self.packages,
            overlays,
            users: self.users,
            disk,
            outputs: self.outputs.unwrap_or_else(|| vec![OutputFormat::Raw]),
            vars: self.vars,
            tailscale: self.tailscale,
            tailnet: self.tailnet,
            fleet: Vec::new(),
            stacks: self.stacks,
            models: self.models,
            storage: self.storage,
            firewall: self.firewall,
            release_key: self.release_key,
            update_url: self.update_url,
            update_tries: self.update_tries,
        })
    }
}

/// The hardware's entries first, less those the profile has one of the
/// same `key` for (the profile's replaces the hardware's); then the
/// profile's.
fn hardware_then_profile<T: Clone, K: PartialEq>(
    hardware: &[T],
    profile: Vec<T>,
    key: impl Fn(&T) -> &K,
) -> Vec<T> {
    let mut out: Vec<T> = hardware
        .iter()
        .filter(|h| !profile.iter().any(|p| key(p) == key(h)))
        .cloned()
        .collect();
    out.extend(profile);
    out
}

/// The hardware's repositories first, unless the profile declares one of
/// the same name; then the profile's.
fn with_hardware_apt(hw: &Hardware, profile: super::Apt) -> super::Apt {
    let repositories =
        hardware_then_profile(&hw.apt.repositories, profile.repositories, |r| &r.name);
    let mut local = hw.apt.local.clone();
    local.extend(
        profile
            .local
            .into_iter()
            .filter(|d| !hw.apt.local.contains(d)),
    );
    super::Apt {
        repositories,
        local,
    }
}

/// `[firewall]` over what the extended profiles said: each list given
/// replaces the inherited one; port 0 is refused.
fn firewall(
    ctx: &FileCtx,
    f: &super::FirewallFile,
    into: &mut super::Firewall,
    errors: &mut Vec<ProfileError>,
) {
    let ports = |list: &Vec<Spanned<u16>>, errors: &mut Vec<ProfileError>| {
        let mut out: Vec<u16> = Vec::new();
        for p in list {
            if *p.get_ref() == 0 {
                errors.push(ctx.error_at(p, "port 0 is not a port: use 1 to 65535"));
            } else if !out.contains(p.get_ref()) {
                out.push(*p.get_ref());
            }
        }
        out.sort_unstable();
        out
    };
    if let Some(l) = &f.lan_tcp {
        into.lan_tcp = ports(l, errors);
    }
    if let Some(l) = &f.lan_udp {
        into.lan_udp = ports(l, errors);
    }
}

fn set<T>(slot: &mut Option<T>, value: Option<T>) {
    if value.is_some() {
        *slot = value;
    }
}

fn push_unique(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

fn load_hardware(
    ctx: &FileCtx,
    name: &Spanned<String>,
    errors: &mut Vec<ProfileError>,
) -> Option<Hardware> {
    match read_hardware(ctx, name, errors) {
        Ok(h) => h,
        Err(e) => {
            errors.push(e);
            None
        }
    }
}

fn read_hardware(
    ctx: &FileCtx,
    name: &Spanned<String>,
    errors: &mut Vec<ProfileError>,
) -> Result<Option<Hardware>, ProfileError> {
    let path = ctx.find_file("hardware", name)?;
    let hw_ctx = FileCtx::read(&path)?;
    let file: HardwareFile = toml::from_str(&hw_ctx.source)
        .map_err(|e| ProfileError::from_toml(&hw_ctx.path, &hw_ctx.source, &e))?;
    validate::hardware(&file).map_err(|msg| ProfileError::whole_file(&path, msg))?;
    let before = errors.len();
    let mut hw_apt = super::Apt::default();
    if let Some(a) = &file.apt {
        apt::merge(&hw_ctx, a, &mut hw_apt, errors);
    }
    let mut overlays = Vec::new();
    for o in &file.overlays {
        match hw_ctx.find_dir("overlays", o) {
            Ok(dir) => overlays.push(Overlay {
                name: o.get_ref().clone(),
                dir,
            }),
            Err(e) => errors.push(e),
        }
    }
    if errors.len() > before {
        return Ok(None);
    }
    Ok(Some(Hardware {
        name: file.name.unwrap_or_else(|| name.get_ref().clone()),
        description: file.description.unwrap_or_default(),
        file: path,
        arch: file.arch,
        firmware: file.firmware,
        packages: file.packages,
        kernel_cmdline: file.kernel_cmdline,
        initramfs: file.initramfs,
        initramfs_modules: file.initramfs_modules,
        rpi: file.rpi,
        apt: hw_apt,
        overlays,
    }))
}

fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

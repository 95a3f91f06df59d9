//! Which kernel modules an initramfs needs, in load order: the requested
//! ones and everything they depend on, read from the kernel's modules.dep.

use std::collections::{BTreeMap, BTreeSet};

/// The kernel's module index: modules.dep and modules.builtin.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    /// Module path (relative to /lib/modules/<version>/) → its dependencies.
    deps: BTreeMap<String, Vec<String>>,
    /// Names (with `_`) of modules built into the kernel.
    builtin: BTreeSet<String>,
}

/// A module's name as the kernel knows it: file stem with `-` as `_`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl ModuleIndex {
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> Self {
        let deps = modules_dep
            .lines()
            .filter_map(|l| {
                let (module, deps) = l.split_once(':')?;
                Some((
                    module.trim().to_owned(),
                    deps.split_whitespace().map(str::to_owned).collect(),
                ))
            })
            .collect();
        let builtin = modules_builtin
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(module_name)
            .collect();
        ModuleIndex { deps, builtin }
    }

    /// The module files for `wanted` and their dependencies, each after
    /// the modules it needs. An entry ending in `/` means every module
    /// below that directory (e.g. `kernel/drivers/mmc/`). Built-in
    /// modules need nothing; names the kernel has neither as a module nor
    /// built in are returned as the error.
    pub fn resolve(&self, wanted: &[String]) -> Result<Vec<String>, Vec<String>> {
        let mut missing = Vec::new();
        let mut roots = Vec::new();
        for w in wanted {
            if w.ends_with('/') {
                let found: Vec<&String> = self.deps.keys().filter(|k| k.starts_with(w)).collect();
                if found.is_empty() {
                    missing.push(w.clone());
                }
                roots.extend(found.into_iter().cloned());
                continue;
            }
            let name = w.replace('-', "_");
            match self.deps.keys().find(|k| module_name(k) == name) {
                Some(path) => roots.push(path.clone()),
                None if self.builtin.contains(&name) => {}
                None => missing.push(w.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(missing);
        }
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for r in roots {
            self.visit(&r, &mut seen, &mut order);
        }
        Ok(order)
    }

    /// Depth-first, dependencies first; `seen` also breaks cycles, which a
    /// sane modules.dep does not have.
    fn visit(&self, module: &str, seen: &mut BTreeSet<String>, order: &mut Vec<String>) {
        if !seen.insert(module.to_owned()) {
            return;
        }
        for d in self.deps.get(module).into_iter().flatten() {
            self.visit(d, seen, order);
        }
        order.push(module.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz kernel/fs/mbcache.ko.xz kernel/lib/crc16.ko.xz
kernel/fs/jbd2/jbd2.ko.xz: kernel/lib/crc16.ko.xz
kernel/fs/mbcache.ko.xz:
kernel/lib/crc16.ko.xz:
kernel/drivers/mmc/host/sdhci-iproc.ko.xz: kernel/drivers/mmc/host/sdhci-pltfm.ko.xz kernel/drivers/mmc/host/sdhci.ko.xz
kernel/drivers/mmc/host/sdhci-pltfm.ko.xz: kernel/drivers/mmc/host/sdhci.ko.xz
kernel/drivers/mmc/host/sdhci.ko.xz:
kernel/drivers/block/virtio_blk.ko.xz:
";

    fn index() -> ModuleIndex {
        ModuleIndex::parse(DEP, "kernel/drivers/virtio/virtio_pci.ko\n")
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let order = index()
            .resolve(&["ext4".into(), "sdhci_iproc".into()])
            .unwrap();
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            [
                "crc16",
                "jbd2",
                "mbcache",
                "ext4",
                "sdhci",
                "sdhci_pltfm",
                "sdhci_iproc"
            ]
        );
    }

    #[test]
    fn dashes_and_underscores_match_and_builtins_need_nothing() {
        let order = index()
            .resolve(&["sdhci-pltfm".into(), "virtio_pci".into()])
            .unwrap();
        assert_eq!(order.len(), 2, "{order:?}");
    }

    #[test]
    fn directories_take_every_module_below() {
        let order = index().resolve(&["kernel/drivers/mmc/".into()]).unwrap();
        assert_eq!(order.len(), 3);
        assert!(order.iter().all(|p| p.starts_with("kernel/drivers/mmc/")));
    }

    #[test]
    fn unknown_modules_are_all_reported() {
        let err = index()
            .resolve(&["ext4".into(), "nope".into(), "kernel/none/".into()])
            .unwrap_err();
        assert_eq!(err, ["nope", "kernel/none/"]);
    }
}

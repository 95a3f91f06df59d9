//! The fake machine's programs: sfdisk, partx, resize2fs, tailscale,
//! journalctl and docker answer from [`World`], and every call is recorded
//! and may be "killed" (a panic) before or after it takes effect.

use std::fs;

use nodeforge_firstboot::agent::Observer;
use nodeforge_firstboot::runner::{Cmd, CmdOutput, CommandRunner, SpawnError};
use nodeforge_firstboot::steps::Step;

use super::{output_fail, output_ok, Kill, Machine, DISK_SECTORS, KILLED, PART_START};

impl Machine {
    fn maybe_kill(&self, line: &str, after: bool) {
        let k = self.kill.borrow().clone();
        let hit = match k {
            Kill::BeforeCmd(p) => !after && line.starts_with(p),
            Kill::AfterCmd(p) => after && line.starts_with(p),
            Kill::None | Kill::BeforeStep(_) | Kill::AfterStep(_) => false,
        };
        if hit {
            panic!(
                "{KILLED} at `{line}` ({})",
                if after { "after" } else { "before" }
            );
        }
    }

    fn ts_status_json(&self) -> String {
        let mut w = self.world.borrow_mut();
        if w.starting_polls > 0 {
            w.starting_polls -= 1;
            return r#"{"BackendState":"Starting","TailscaleIPs":null,"Self":{"TailscaleIPs":null}}"#.into();
        }
        if w.nostate_polls > 0 {
            w.nostate_polls -= 1;
            return r#"{"BackendState":"NoState","TailscaleIPs":null,"Self":null}"#.into();
        }
        if w.ts_backend == "Running" {
            format!(
                r#"{{"Version":"1.76.1","BackendState":"Running","TailscaleIPs":["100.64.0.7","fd7a:115c:a1e0::7"],"Self":{{"HostName":"{}","TailscaleIPs":["100.64.0.7"],"Tags":["{}"]}}}}"#,
                w.ts_host, w.ts_tags
            )
        } else {
            format!(
                r#"{{"Version":"1.76.1","BackendState":"{}","TailscaleIPs":null,"Self":{{"TailscaleIPs":null}}}}"#,
                w.ts_backend
            )
        }
    }

    fn tailscale_up(&self, cmd: &Cmd) -> CmdOutput {
        let arg = |name: &str| {
            cmd.args
                .iter()
                .find_map(|a| a.strip_prefix(&format!("--{name}=")))
                .map(str::to_string)
        };
        let Some(key_path) =
            arg("auth-key").and_then(|k| k.strip_prefix("file:").map(str::to_string))
        else {
            return output_fail(1, "test: auth key not passed as file:");
        };
        let Ok(key) = fs::read_to_string(&key_path) else {
            return output_fail(1, &format!("open {key_path}: no such file or directory"));
        };
        let w = self.world.borrow().clone();
        if w.up_timed_out {
            return CmdOutput {
                code: None,
                timed_out: true,
                ..Default::default()
            };
        }
        let stderr = w.up_stderr.clone().or_else(|| {
            if key.contains("expired") {
                Some(
                    "backend error: invalid key: unable to validate API key: auth key expired"
                        .into(),
                )
            } else if key.contains("badtag") {
                Some(
                    "backend error: requested tags [tag:core,tag:lab] are invalid or not permitted"
                        .into(),
                )
            } else {
                None
            }
        });
        if let Some(e) = stderr {
            return output_fail(1, &e);
        }
        let mut w = self.world.borrow_mut();
        w.ts_backend = "Running".into();
        w.ts_host = arg("hostname").unwrap_or_default();
        w.ts_tags = arg("advertise-tags").unwrap_or_default();
        w.joins += 1;
        output_ok("")
    }

    fn simulate(&self, cmd: &Cmd) -> Result<CmdOutput, SpawnError> {
        let line = cmd.line();
        let sys = |p: &str| self.path(&format!("/sys/devices/pci0/virtio1/block/vda/{p}"));
        Ok(match line.as_str() {
            "sfdisk --relocate gpt-bak-std /dev/vda" => output_ok(""),
            l if l.starts_with("sfdisk --quiet /dev/vd") => self.data_sfdisk(cmd),
            "udevadm settle --timeout=30" => output_ok(""),
            l if l.starts_with("mkfs.ext4 -q -L ") => self.data_mkfs(cmd),
            l if l.starts_with("mount /") => self.data_mount(cmd),
            "sfdisk --no-reread --no-tell-kernel -N 2 /dev/vda" => {
                assert_eq!(cmd.stdin.as_deref(), Some(", +\n"));
                {
                    let mut w = self.world.borrow_mut();
                    w.table_grown = true;
                    w.partitionings += 1;
                }
                self.sync_disk();
                output_ok("")
            }
            "partx -u --nr 2 /dev/vda" => {
                if self.world.borrow().table_grown {
                    let max = DISK_SECTORS - 33 - PART_START;
                    fs::write(sys("vda2/size"), format!("{max}\n")).unwrap();
                }
                output_ok("")
            }
            "resize2fs /dev/vda2" => {
                let size: u64 = fs::read_to_string(sys("vda2/size"))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                {
                    let mut w = self.world.borrow_mut();
                    w.fs_blocks = size * 512 / 4096;
                    w.resizes += 1;
                }
                self.sync_disk();
                output_ok("")
            }
            "tailscale status --json" => output_ok(&self.ts_status_json()),
            l if l.starts_with("tailscale up ") => self.tailscale_up(cmd),
            l if l.starts_with("tailscale set --hostname=") => {
                self.world.borrow_mut().ts_host =
                    l["tailscale set --hostname=".len()..].to_string();
                output_ok("")
            }
            l if l.starts_with("journalctl ") => {
                let out = self.world.borrow().journal_out.clone();
                CmdOutput {
                    code: Some(if out.is_empty() { 1 } else { 0 }),
                    stdout: out,
                    ..Default::default()
                }
            }
            l if l.starts_with("docker ") => self.docker(cmd),
            "systemctl is-failed docker.service docker.socket containerd.service nodeforge-firewall.service" => {
                let d = &self.world.borrow().docker;
                let docker = match (d.engine_failed, d.engine_down_polls > 0) {
                    (true, _) => "failed",
                    (false, true) => "activating",
                    (false, false) => "active",
                };
                let firewall = if d.firewall_failed { "failed" } else { "active" };
                let any = docker == "failed" || firewall == "failed";
                CmdOutput {
                    code: Some(if any { 0 } else { 1 }),
                    stdout: format!("{docker}\nactive\nactive\n{firewall}\n"),
                    ..Default::default()
                }
            }
            other => panic!("unexpected command `{other}`"),
        })
    }

    fn docker(&self, cmd: &Cmd) -> CmdOutput {
        let mut w = self.world.borrow_mut();
        let d = &mut w.docker;
        let args: Vec<&str> = cmd.args.iter().map(String::as_str).collect();
        match args.as_slice() {
            ["info", ..] if d.engine_down_polls > 0 => {
                d.engine_down_polls -= 1;
                output_fail(
                    1,
                    "Cannot connect to the Docker daemon at unix:///var/run/docker.sock",
                )
            }
            ["info", ..] => output_ok("26.1.5+dfsg1\n"),
            ["image", "ls", ..] => output_ok(
                &d.images
                    .iter()
                    .map(|(id, tag)| format!("{id} {tag}\n"))
                    .collect::<String>(),
            ),
            ["tag", id, tag] => {
                d.images.push((id.to_string(), tag.to_string()));
                d.tags += 1;
                output_ok("")
            }
            ["compose", .., "up", "--detach", "--pull", "never", "--no-build", "--remove-orphans"] =>
            {
                d.ups += 1;
                output_ok("")
            }
            ["compose", .., "config", "--services"] => output_ok(&d.services),
            ["compose", .., "ps", "--all", "--format", "json"] => {
                let out = if d.ps.len() > 1 {
                    d.ps.remove(0)
                } else {
                    d.ps.first().cloned().unwrap_or_default()
                };
                output_ok(&out)
            }
            other => panic!("unexpected docker command {other:?}"),
        }
    }
}

impl CommandRunner for Machine {
    fn output(&self, cmd: &Cmd) -> Result<CmdOutput, SpawnError> {
        let line = cmd.line();
        assert!(
            !line.contains("tskey-auth"),
            "secret on a command line: {line}"
        );
        self.calls.borrow_mut().push(line.clone());
        if self.world.borrow().missing.contains(&cmd.program.as_str()) {
            return Err(SpawnError::NotFound(cmd.program.clone()));
        }
        self.maybe_kill(&line, false);
        let out = self.simulate(cmd);
        self.maybe_kill(&line, true);
        out
    }
}

impl Observer for Machine {
    fn summary(&self, line: &str) {
        self.summaries.borrow_mut().push(line.to_string());
    }
    fn progress(&self, line: &str) {
        self.progress.borrow_mut().push(line.to_string());
    }
    fn before_step(&self, step: Step) {
        if *self.kill.borrow() == Kill::BeforeStep(step.name()) {
            panic!("{KILLED} before step {}", step.name());
        }
    }
    fn after_step(&self, step: Step) {
        if *self.kill.borrow() == Kill::AfterStep(step.name()) {
            panic!("{KILLED} after step {}", step.name());
        }
    }
}

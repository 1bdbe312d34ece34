//! Processes the lab started inside a host's network namespace: output to files, bounded waits,
//! and a kill of the whole process group (by the PID we started) on request or on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// A process the lab started; killed with its process group when dropped.
#[derive(Debug)]
pub struct LabProcess {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

impl LabProcess {
    /// Starts `program args` in network namespace `netns` (through `ip netns exec`, which
    /// `exec`s the program so the PID we hold is the program's) in a process group of its own,
    /// writing its output to `<dir>/<name>.stdout` and `.stderr`.
    pub fn spawn(
        dir: &Path,
        netns: &str,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> anyhow::Result<LabProcess> {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", netns])
            .arg(program)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(
                File::create(&stdout).with_context(|| format!("creating {}", stdout.display()))?,
            )
            .stderr(
                File::create(&stderr).with_context(|| format!("creating {}", stderr.display()))?,
            );
        // A child takes its settings from its arguments and files only: a `HYDRA_` variable of
        // the test's own environment (scripts/test's database URL, say) must not configure it.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("HYDRA_") {
                command.env_remove(key);
            }
        }
        for (key, value) in env {
            command.env(key, value);
        }
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}: {} in {netns}", program.display()))?;
        Ok(LabProcess {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
            status: None,
        })
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The PID of the program (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if it has exited.
    pub fn try_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait().context("waiting for a lab process")?;
        }
        Ok(self.status)
    }

    /// Waits at most `limit` for the process to exit; `None` if it is still running then.
    pub async fn wait_for_exit(&mut self, limit: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What it wrote to standard output so far.
    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// What it wrote to standard error so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Stops the process group: SIGTERM, then SIGKILL after `grace`; reaps the process.
    pub fn kill(&mut self, grace: Duration) {
        if matches!(self.try_status(), Ok(Some(_))) {
            return;
        }
        let group = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.try_status(), Ok(Some(_))) {
                // The leader is gone; make sure nothing of its group stays behind.
                let _ = killpg(group, Signal::SIGKILL);
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = killpg(group, Signal::SIGKILL);
        self.status = self.child.wait().ok();
    }

    /// Kills the process at once (SIGKILL to its group), as a crash would.
    pub fn kill_hard(&mut self) {
        if matches!(self.try_status(), Ok(Some(_))) {
            return;
        }
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        self.status = self.child.wait().ok();
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        self.kill(Duration::from_millis(500));
    }
}

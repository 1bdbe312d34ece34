//! One session process: the command template, spawning it in its own process group with its
//! output in `web-server.log` (behind a guard that ends the group when the agent dies), the
//! marker file that lets a later agent find it, and ending the whole group.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use process_wrap::tokio::{ChildWrapper, CommandWrap, KillOnDrop, ProcessGroup};
use serde::{Deserialize, Serialize};

/// The file each session process writes its output to, inside its data dir.
pub const LOG_FILE: &str = "web-server.log";
/// The marker the agent leaves in each data dir: which process group runs there.
pub const MARKER_FILE: &str = "hydra-session.json";

/// Placeholders a command template may use.
pub const PLACEHOLDERS: &[&str] = &[
    "{port}",
    "{data_dir}",
    "{session_id}",
    "{body_ip}",
    "{bind}",
    "{webrtc_port_start}",
    "{webrtc_port_end}",
];

/// Checks a command template: at least a program, and no `{...}` other than [`PLACEHOLDERS`].
/// The error names the offending word.
pub fn check_template(template: &[String]) -> Result<(), String> {
    check_template_for("sessions.command", template, PLACEHOLDERS)
}

/// Checks the command template of config key `key`: at least a program, and no `{...}` other
/// than `placeholders`. The error names the key and the offending word.
pub fn check_template_for(
    key: &str,
    template: &[String],
    placeholders: &[&str],
) -> Result<(), String> {
    let Some(program) = template.first() else {
        return Err(format!("{key} must name a program"));
    };
    if program.trim().is_empty() {
        return Err(format!("{key} must name a program"));
    }
    for word in template {
        let mut rest = word.as_str();
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("{key}: unclosed '{{' in {word:?}"))?;
            let placeholder = &rest[open..open + close + 1];
            if !placeholders.contains(&placeholder) {
                return Err(format!(
                    "{key}: unknown placeholder {placeholder} in {word:?} (known: {})",
                    placeholders.join(", ")
                ));
            }
            rest = &rest[open + close + 1..];
        }
    }
    Ok(())
}

/// Values substituted into the template for one session.
#[derive(Debug, Clone)]
pub struct Substitutions<'a> {
    /// The session's port.
    pub port: u16,
    /// The session's data dir.
    pub data_dir: &'a Path,
    /// The session id.
    pub session_id: &'a str,
    /// The body's address.
    pub body_ip: &'a str,
    /// The address the session process should listen on.
    pub bind: &'a str,
    /// The session's WebRTC UDP range, first and last port (`hydra_core::webrtc_ports`).
    pub webrtc_ports: (u16, u16),
}

/// The template with every placeholder replaced.
pub fn expand(template: &[String], values: &Substitutions<'_>) -> Vec<String> {
    let port = values.port.to_string();
    let data_dir = values.data_dir.display().to_string();
    let webrtc_start = values.webrtc_ports.0.to_string();
    let webrtc_end = values.webrtc_ports.1.to_string();
    let pairs: [(&str, &str); 7] = [
        ("{port}", &port),
        ("{data_dir}", &data_dir),
        ("{session_id}", values.session_id),
        ("{body_ip}", values.body_ip),
        ("{bind}", values.bind),
        ("{webrtc_port_start}", &webrtc_start),
        ("{webrtc_port_end}", &webrtc_end),
    ];
    expand_pairs(template, &pairs)
}

/// The template with each `(placeholder, value)` of `pairs` replaced, word by word (argv, never
/// a shell: a value is never split or interpreted).
pub fn expand_pairs(template: &[String], pairs: &[(&str, &str)]) -> Vec<String> {
    template
        .iter()
        .map(|word| {
            pairs
                .iter()
                .fold(word.clone(), |text, (from, to)| text.replace(from, to))
        })
        .collect()
}

/// Whether the template's program exists and is executable (a bare name is looked up in PATH).
pub fn program_installed(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &Path| {
        path.metadata()
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return executable(Path::new(program));
    }
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|directory| executable(&directory.join(program)))
    })
}

/// The guard a session runs under, as the leader of its process group: it starts the session
/// command as its child, exits with its status, and on SIGUSR2 ends the whole group. `setpriv
/// --pdeathsig USR2` (util-linux) has the kernel send it SIGUSR2 when the agent dies, even by
/// SIGKILL, so nothing of a session outlives its agent: children the program forks included,
/// which a parent-death signal on the program alone would leave running. The workspace forbids
/// `unsafe_code`, and setting the signal in the child ourselves needs `pre_exec`, hence the
/// tool. The kernel sends the signal when the *thread* that spawned the guard ends: sessions are
/// spawned from the runtime's worker threads, which live as long as the agent. SIGTERM is passed
/// to the child and the guard waits for it, so ending a session keeps its grace; a guard whose
/// parent is already not the agent (it died during the spawn) exits at once.
const GUARD_SCRIPT: &str = r#"trap 'kill -KILL 0' USR2
trap 'term=1; [ -z "$child" ] || kill -TERM "$child" 2>/dev/null' TERM
[ "$PPID" = "$HYDRA_AGENT_PID" ] || exit 70
"$@" &
child=$!
[ -z "$term" ] || kill -TERM "$child" 2>/dev/null
while :; do
  wait "$child"
  status=$?
  kill -0 "$child" 2>/dev/null || exit "$status"
done"#;

/// `argv` behind the guard ([`GUARD_SCRIPT`]), or `argv` itself, with a warning once, when
/// `setpriv` is not installed.
fn guard(argv: &[String]) -> Vec<String> {
    static SETPRIV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let available = *SETPRIV.get_or_init(|| {
        let found = program_installed("setpriv");
        if !found {
            tracing::warn!("[worker] setpriv (util-linux) not installed: session processes will outlive an agent killed with SIGKILL until the next agent start");
        }
        found
    });
    if !available {
        return argv.to_vec();
    }
    let mut guarded: Vec<String> = [
        "setpriv",
        "--pdeathsig",
        "USR2",
        "--",
        "/bin/sh",
        "-c",
        GUARD_SCRIPT,
        "hydra-session-guard",
    ]
    .map(String::from)
    .to_vec();
    guarded.extend(argv.iter().cloned());
    guarded
}

/// A running session process (its guard), leader of its own process group.
#[derive(Debug)]
pub struct SessionProcess {
    child: Box<dyn ChildWrapper>,
    pgid: i32,
    /// Set once the whole group was ended: its id may be reused, so it is not signalled again.
    ended: bool,
}

impl SessionProcess {
    /// Spawns `argv` in a new process group, in `data_dir`, with stdout and stderr appended to
    /// `web-server.log` there and `env` added to the environment.
    pub fn spawn(
        argv: &[String],
        data_dir: &Path,
        env: &HashMap<&'static str, String>,
    ) -> std::io::Result<SessionProcess> {
        SessionProcess::spawn_logged(argv, data_dir, LOG_FILE, env)
    }

    /// As [`SessionProcess::spawn`], with the output appended to `log_name` in `data_dir` (the
    /// body role's launched experiences use the same group handling as sessions).
    pub fn spawn_logged(
        argv: &[String],
        data_dir: &Path,
        log_name: &str,
        env: &HashMap<&'static str, String>,
    ) -> std::io::Result<SessionProcess> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join(log_name))?;
        let log_err = log.try_clone()?;
        if argv.is_empty() {
            return Err(std::io::Error::other("empty command"));
        }
        let guarded = guard(argv);
        let (program, args) = guarded
            .split_first()
            .ok_or_else(|| std::io::Error::other("empty command"))?;
        let mut command = CommandWrap::with_new(program, |command| {
            command
                .args(args)
                .current_dir(data_dir)
                .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
                .env("HYDRA_AGENT_PID", std::process::id().to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(log_err));
        });
        command.wrap(ProcessGroup::leader()).wrap(KillOnDrop);
        let child = command.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("the session process has no pid"))?;
        let pgid = i32::try_from(pid).map_err(std::io::Error::other)?;
        Ok(SessionProcess {
            child,
            pgid,
            ended: false,
        })
    }

    /// The process id of the leader (also the process group id).
    pub fn pid(&self) -> i32 {
        self.pgid
    }

    /// `Some(description)` once the leader has exited (reaping it), `None` while it runs.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(error) => Some(format!("cannot wait for it: {error}")),
        }
    }

    /// Sends `signal` to the whole group; a group that is already gone is not an error.
    pub fn signal_group(&self, signal: Signal) {
        signal_group(self.pgid, signal);
    }

    /// Ends the whole group: SIGTERM, then SIGKILL after `grace` if the leader still runs, and
    /// reaps it.
    pub async fn end(mut self, grace: std::time::Duration) {
        self.signal_group(Signal::SIGTERM);
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            self.signal_group(Signal::SIGKILL);
            let _ = tokio::time::timeout(grace, self.child.wait()).await;
        }
        // Stragglers that ignored SIGTERM while the leader obeyed.
        self.signal_group(Signal::SIGKILL);
        self.ended = true;
    }
}

impl Drop for SessionProcess {
    /// A dropped handle never leaves its group running.
    fn drop(&mut self) {
        if !self.ended {
            signal_group(self.pgid, Signal::SIGKILL);
        }
    }
}

/// Sends `signal` to process group `pgid`, ignoring a group that no longer exists.
pub fn signal_group(pgid: i32, signal: Signal) {
    if pgid <= 1 {
        return;
    }
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(error) => {
            tracing::warn!(pgid, %error, "[worker] cannot signal a session process group")
        }
    }
}

/// What the agent writes into a data dir so that a later agent can end an orphaned process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// Session id.
    pub session_id: String,
    /// Process group id of the session process.
    pub pgid: i32,
    /// Its port.
    pub port: u16,
}

impl Marker {
    /// Writes the marker into `data_dir`.
    pub fn write(&self, data_dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(data_dir.join(MARKER_FILE), text)
    }

    /// Reads the marker of `data_dir`, if it has a readable one.
    pub fn read(data_dir: &Path) -> Option<Marker> {
        let text = std::fs::read(data_dir.join(MARKER_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

/// The last `limit` bytes of the session's log, lossily decoded (for error messages).
pub fn log_tail(data_dir: &Path, limit: u64) -> String {
    let path: PathBuf = data_dir.join(LOG_FILE);
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let length = file.metadata().map(|meta| meta.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(length.saturating_sub(limit)));
    let mut bytes = Vec::new();
    let _ = file.take(limit).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_and_reject_unknown_placeholders() {
        let template: Vec<String> = [
            "/bin/ws",
            "--port={port}",
            "{data_dir}/x",
            "{body_ip}",
            "--webrtc-ports={webrtc_port_start}-{webrtc_port_end}",
        ]
        .map(String::from)
        .to_vec();
        check_template(&template).unwrap();
        let expanded = expand(
            &template,
            &Substitutions {
                port: 8081,
                data_dir: Path::new("/s/abc"),
                session_id: "abc",
                body_ip: "10.0.0.2",
                bind: "127.0.0.1",
                webrtc_ports: (40020, 40039),
            },
        );
        assert_eq!(
            expanded,
            [
                "/bin/ws",
                "--port=8081",
                "/s/abc/x",
                "10.0.0.2",
                "--webrtc-ports=40020-40039"
            ]
        );
        let bad = check_template(&["/bin/ws".into(), "{prot}".into()]).unwrap_err();
        assert!(bad.contains("unknown placeholder {prot}"), "{bad}");
        assert!(check_template(&[]).is_err());
        assert!(
            check_template(&["x{port".into()])
                .unwrap_err()
                .contains("unclosed")
        );
    }

    #[test]
    fn programs_are_found_by_path_or_in_path() {
        assert!(program_installed("sh"));
        assert!(program_installed("/bin/sh"));
        assert!(!program_installed("/opt/does-not-exist/web-server"));
        assert!(!program_installed("hydra-no-such-program"));
    }
}

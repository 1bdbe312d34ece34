//! Runs a lab scenario inside namespaces of its own: the test re-executes its own binary under
//! `unshare --net --mount --pid --fork --kill-child`, so
//! - no packet can leave the machine (a fresh network namespace with only loopback),
//! - `ip netns add` mounts stay private (a tmpfs on `/run/netns` in a private mount namespace),
//! - every process the scenario started dies with it (a PID namespace whose init is the test;
//!   `--kill-child` kills it if the outer test dies), whatever state the test ends in.
//!
//! The outer test waits a bounded time, then passes or fails with the inner output and the
//! logs of every lab process. A machine that cannot run the lab fails the test with a message
//! saying what is missing; it never passes silently.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::topology::{Lab, run_bounded};

const INSIDE_ENV: &str = "HYDRA_LAB_INSIDE";
const DIR_ENV: &str = "HYDRA_LAB_DIR";
const BIN_DIR_ENV: &str = "HYDRA_LAB_BIN_DIR";
const PASSED_MARK: &str = "hydra-lab: scenario passed:";
/// How long one scenario may take before the outer test kills it (override with
/// `HYDRA_LAB_TIMEOUT_SECS`).
const DEFAULT_LIMIT: Duration = Duration::from_secs(240);

/// Runs `scenario` in a lab of its own, from a `#[test]` function. Panics (fails the test) when
/// the scenario fails, times out, or the machine cannot run a lab.
pub fn run_isolated<F, Fut>(scenario: F)
where
    F: FnOnce(Lab) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    run_isolated_within(DEFAULT_LIMIT, scenario);
}

/// [`run_isolated`] for a scenario that needs more than the default 240 s (many processes on a
/// loaded machine); `HYDRA_LAB_TIMEOUT_SECS` still overrides `limit`.
pub fn run_isolated_within<F, Fut>(limit: Duration, scenario: F)
where
    F: FnOnce(Lab) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    if let Ok(name) = std::env::var(INSIDE_ENV) {
        run_inside(&name, scenario);
        return;
    }
    let name = std::thread::current()
        .name()
        .filter(|name| *name != "main")
        .map(str::to_owned)
        .expect("run_isolated must be called from a libtest test thread (named after the test)");
    if let Err(error) = run_outside(&name, limit) {
        panic!("lab scenario {name}: {error:#}");
    }
}

/// What the machine lacks to run the lab, if anything.
pub fn missing_requirements() -> Vec<String> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push(
            "root (the lab creates network namespaces and nftables rules): run the lab tests as root"
                .to_owned(),
        );
    }
    for (tool, package) in [
        ("unshare", "util-linux"),
        ("ip", "iproute2"),
        ("nft", "nftables"),
    ] {
        if find_in_path(tool).is_none() {
            missing.push(format!(
                "`{tool}` (install it with `apt-get install -y {package}`)"
            ));
        }
    }
    missing
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// The directory holding the test binaries' sibling executables (`target/debug`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var(BIN_DIR_ENV) {
        return Ok(dir.into());
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe
        .parent()
        .context("the running executable has no directory")?
        .to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// Builds the stand-in binaries next to the test binary with the cargo that runs the test
/// (cargo only builds a package's own binaries for its tests). Without cargo (`CARGO` unset),
/// checks that they exist.
pub fn ensure_stand_ins(bin_dir: &Path) -> anyhow::Result<()> {
    if let Ok(cargo) = std::env::var("CARGO") {
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let mut args = vec!["build", "--quiet", "--manifest-path", manifest, "--bins"];
        if bin_dir.ends_with("release") {
            args.push("--release");
        }
        run_bounded(&cargo, &args, None, Duration::from_secs(600))
            .context("building the lab stand-ins (cargo build -p hydra-lab --bins)")?;
    }
    for name in ["hydra-lab-stream-server", "hydra-lab-stream-client"] {
        let path = bin_dir.join(name);
        if !path.is_file() {
            anyhow::bail!(
                "{} is missing: build it with `cargo build -p hydra-lab --bins`",
                path.display()
            );
        }
    }
    Ok(())
}

/// What the outer process prepared: the binaries' directory and a temporary directory that
/// outlives the inner run (removed on drop unless kept).
struct Outer {
    bin_dir: PathBuf,
    workdir: tempfile::TempDir,
}

impl Outer {
    /// Checks the machine, builds the stand-ins and makes the temporary directory.
    fn prepare() -> anyhow::Result<Outer> {
        let missing = missing_requirements();
        if !missing.is_empty() {
            anyhow::bail!(
                "this machine cannot run the lab; missing: {}",
                missing.join("; ")
            );
        }
        let bin_dir = bin_dir()?;
        ensure_stand_ins(&bin_dir)?;
        let workdir = tempfile::Builder::new()
            .prefix("hydra-lab-")
            .tempdir()
            .context("creating the lab's temporary directory")?;
        Ok(Outer { bin_dir, workdir })
    }

    /// This executable with `args`, under `unshare` in fresh net, mount and PID namespaces.
    fn command(
        &self,
        inside: &str,
        args: impl IntoIterator<Item = std::ffi::OsString>,
    ) -> anyhow::Result<Command> {
        let mut command = Command::new("unshare");
        command
            .args([
                "--net",
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "--",
            ])
            .arg(std::env::current_exe()?)
            .args(args)
            .env(INSIDE_ENV, inside)
            .env(DIR_ENV, self.workdir.path())
            .env(BIN_DIR_ENV, &self.bin_dir)
            .stdin(Stdio::null());
        Ok(command)
    }
}

/// Waits for `child` at most `limit`; kills it (and with `--kill-child` its namespaces) after.
fn wait_bounded(
    child: &mut std::process::Child,
    limit: Duration,
) -> anyhow::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_outside(name: &str, default_limit: Duration) -> anyhow::Result<()> {
    let outer = Outer::prepare()?;
    let output_path = outer.workdir.path().join("scenario.log");
    let output = std::fs::File::create(&output_path)?;
    let args = [name, "--exact", "--nocapture", "--test-threads=1"].map(std::ffi::OsString::from);
    let mut child = outer
        .command(name, args)?
        .stdout(output.try_clone()?)
        .stderr(output)
        .spawn()
        .context("starting the scenario under unshare")?;
    let limit = std::env::var("HYDRA_LAB_TIMEOUT_SECS")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(default_limit);
    let status = wait_bounded(&mut child, limit)?;
    let text = std::fs::read_to_string(&output_path).unwrap_or_default();
    let passed = status.is_some_and(|status| status.success())
        && text.contains(&format!("{PASSED_MARK} {name}"));
    println!("{text}");
    if passed {
        return Ok(());
    }
    let logs = process_logs(&outer.workdir.path().join("lab"));
    if std::env::var_os("HYDRA_LAB_KEEP").is_some() {
        let kept = outer.workdir.keep();
        println!("[lab] kept {}", kept.display());
    }
    match status {
        None => anyhow::bail!("timed out after {limit:?}\n{}\n{logs}", tail(&text, 200)),
        Some(status) => anyhow::bail!("failed ({status})\n{}\n{logs}", tail(&text, 200)),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn process_logs(dir: &Path) -> String {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return String::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "stdout" || ext == "stderr")
        })
        .collect();
    paths.sort();
    let mut out = String::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.trim().is_empty() {
            continue;
        }
        out.push_str(&format!(
            "----- {} -----\n{}\n",
            path.display(),
            tail(&text, 60)
        ));
    }
    out
}

fn run_inside<F, Fut>(name: &str, scenario: F)
where
    F: FnOnce(Lab) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    match inside(scenario) {
        Ok(()) => println!("{PASSED_MARK} {name}"),
        Err(error) => panic!("lab scenario {name} failed: {error:#}"),
    }
}

/// Builds the lab in the namespaces the outer process made and runs `scenario` in it.
fn inside<F, Fut>(scenario: F) -> anyhow::Result<()>
where
    F: FnOnce(Lab) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let dir: PathBuf = std::env::var(DIR_ENV)
        .context("HYDRA_LAB_DIR is not set: the outer process starts the lab itself")?
        .into();
    prepare_namespace()?;
    let lab = Lab::new(&dir.join("lab"), &bin_dir()?)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(scenario(lab))
}

/// Runs `scenario` in a lab of its own from a program's `main` (the benchmark): the program
/// re-executes itself with the same arguments under `unshare`, output going straight through,
/// and answers the inner run's exit code. Bounded by `limit`.
pub fn run_isolated_main<F, Fut>(limit: Duration, scenario: F) -> std::process::ExitCode
where
    F: FnOnce(Lab) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    if std::env::var_os(INSIDE_ENV).is_some() {
        return match inside(scenario) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match outer_main(limit) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn outer_main(limit: Duration) -> anyhow::Result<std::process::ExitCode> {
    let outer = Outer::prepare()?;
    let mut child = outer
        .command("main", std::env::args_os().skip(1))?
        .spawn()
        .context("starting the lab under unshare")?;
    match wait_bounded(&mut child, limit)? {
        Some(status) if status.success() => Ok(std::process::ExitCode::SUCCESS),
        Some(_) => Ok(std::process::ExitCode::FAILURE),
        None => anyhow::bail!("the lab run did not finish within {limit:?}"),
    }
}

/// Makes `/run/netns` a private tmpfs and brings loopback up, after checking that this is a
/// fresh network namespace (only `lo`) so nothing can reach a real network.
fn prepare_namespace() -> anyhow::Result<()> {
    let links = run_bounded("ip", &["-o", "link", "show"], None, Duration::from_secs(10))?;
    let names: Vec<&str> = links
        .lines()
        .filter_map(|line| line.split(':').nth(1))
        .map(str::trim)
        .collect();
    if names != ["lo"] {
        anyhow::bail!("refusing to build a lab: this namespace has links {names:?}, not only lo");
    }
    std::fs::create_dir_all("/run/netns").context("creating /run/netns")?;
    run_bounded(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=1m,mode=755",
            "hydra-lab",
            "/run/netns",
        ],
        None,
        Duration::from_secs(10),
    )?;
    run_bounded(
        "ip",
        &["link", "set", "lo", "up"],
        None,
        Duration::from_secs(10),
    )?;
    Ok(())
}

//! `hydra demo` as a newcomer runs it: the real binary, its dashboard and API reachable, the
//! simulated fleet there, a head failing over within the first chaos cycle, a session placed on
//! one of its two real worker agents, and after SIGINT nothing left: no process (the demo, its
//! agents, their sessions), no temp dir, no listening port.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::Method;

use crate::support::{call_as, http};

/// Waits (at most 60 s) until the demo's output has a line for which `find` answers something.
fn wait_line<T>(output: &Mutex<Vec<String>>, find: impl Fn(&[String]) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(found) = find(&output.lock().unwrap()) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not print what was expected within 60 s:\n{}",
            output.lock().unwrap().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn value_after(lines: &[String], prefix: &str) -> Option<String> {
    lines
        .iter()
        .find_map(|line| line.strip_prefix(prefix).map(|rest| rest.trim().to_owned()))
}

#[tokio::test]
async fn the_demo_runs_a_fleet_fails_over_and_leaves_nothing_after_sigint() {
    // Nothing beside `hydra` is needed: its workers run `hydra demo-session`.
    let mut child = Command::new(env!("CARGO_BIN_EXE_hydra"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--seed",
            "7",
            "--cycle",
            "2",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hydra demo");
    let output = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let (output, stdout) = (output.clone(), child.stdout.take().expect("stdout"));
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                output.lock().unwrap().push(line);
            }
        })
    };
    let url = wait_line(&output, |lines| value_after(lines, "[demo] dashboard: "));
    let token = wait_line(&output, |lines| value_after(lines, "[demo] admin token: "));
    let dir = PathBuf::from(wait_line(&output, |lines| {
        value_after(lines, "[demo] data dir: ")
    }));
    assert!(dir.is_dir(), "the demo's data dir {} exists", dir.display());
    assert!(!token.is_empty());

    let page = http().get(&url).send().await.expect("dashboard");
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Hydra fleet"));
    let (status, nodes) = call_as(&token, Method::GET, &format!("{}api/v1/nodes", url), None).await;
    assert_eq!(status, 200, "{nodes}");
    let nodes = nodes["nodes"].as_array().expect("nodes").clone();
    let districts: std::collections::BTreeSet<&str> = nodes
        .iter()
        .map(|node| node["district"].as_str().unwrap())
        .collect();
    assert!(nodes.len() >= 8, "a fleet: {nodes:?}");
    assert_eq!(districts.into_iter().collect::<Vec<_>>(), ["ams1", "bxl1"]);

    // The first chaos event kills a body in use; its head fails over before the next event.
    let (died, failover) = wait_line(&output, |lines| {
        let died = lines
            .iter()
            .position(|line| line.contains("chaos: body") && line.contains("dies"))?;
        let failover = lines[died..]
            .iter()
            .position(|line| line.starts_with("[demo] failover:"))?
            + died;
        Some((died, failover))
    });
    {
        let lines = output.lock().unwrap();
        let first_chaos = lines
            .iter()
            .position(|line| line.contains("[demo] chaos:"))
            .unwrap();
        assert_eq!(
            died, first_chaos,
            "the first chaos event is a body dying: {lines:#?}"
        );
        assert!(
            !lines[died + 1..failover]
                .iter()
                .any(|line| line.contains("[demo] chaos:")),
            "the failover came within the first cycle: {lines:#?}"
        );
    }

    // The third cycle places a session on a worker agent, which runs the stand-in for it.
    let placed = wait_line(&output, |lines| {
        lines
            .iter()
            .find(|line| line.contains("chaos: session") && line.contains("placed on worker"))
            .cloned()
    });
    let worker_pids: Vec<u32> = output
        .lock()
        .unwrap()
        .iter()
        .filter_map(|line| {
            line.strip_prefix("[demo] worker ")?
                .rsplit_once("pid ")?
                .1
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(worker_pids.len(), 2, "two workers: {placed}");

    // Once both workers' agents are known, a fan-out capture of their feeds runs (the
    // dashboard's captures panel shows it).
    let capture_id = wait_line(&output, |lines| {
        lines.iter().find_map(|line| {
            let rest = line.strip_prefix("[demo] capture ")?;
            Some(rest.split_once(' ')?.0.to_owned())
        })
    });
    let (status, capture) = call_as(
        &token,
        Method::GET,
        &format!("{url}api/v1/captures/{capture_id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{capture}");
    assert_eq!(capture["fan_out"], true, "{capture}");
    assert_eq!(
        capture["node_segments"].as_array().map(Vec::len),
        Some(2),
        "{capture}"
    );

    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    kill(pid, Signal::SIGINT).expect("SIGINT the demo");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the demo") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not stop within 30 s of SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    reader.join().expect("output reader");
    assert!(status.success(), "{status}");
    assert!(!dir.exists(), "{} is removed", dir.display());
    assert!(
        output
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.starts_with("[demo] stopped; removed")),
        "{:#?}",
        output.lock().unwrap()
    );
    // Nothing listens any more: the control plane's port and the bodies' are free again.
    let address: SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("the URL's address");
    drop(std::net::TcpListener::bind(address).expect("the demo's port is free"));
    assert!(
        std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_err(),
        "nothing answers on {address}"
    );
    // And no process of it is left: the demo is reaped, its agents are gone, and no process
    // (a session's stand-in included) runs from or with its dir.
    assert!(
        !std::path::Path::new(&format!("/proc/{}", child.id())).exists(),
        "the demo process is gone"
    );
    for worker in worker_pids {
        let alive = std::fs::read_to_string(format!("/proc/{worker}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "));
        assert!(!alive, "worker agent {worker} is gone");
    }
    let dir_text = dir.display().to_string();
    let leftovers: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(&dir_text))
        .collect();
    assert!(
        leftovers.is_empty(),
        "processes of the demo left: {leftovers:?}"
    );
}

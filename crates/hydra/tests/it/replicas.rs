//! Replicas on one PostgreSQL, with real `hydra server` processes and real signals: exactly one
//! master, writes through any replica land, a master killed under load loses no acknowledged
//! write, a stopped master steps down by itself and writes nothing of its old term. SQLite
//! refuses a second server on its file.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hydra_api::{CheckMaster, EnrolRequest, RoleWire};
use hydra_client::{Client, ClientConfig, RetryPolicy};
use hydra_store::Store;
use reqwest::Method;
use serde_json::json;

use crate::support::{ADMIN_TOKEN, ServerProcess, ServerSetup, call, eventually, http};

/// Starts `count` replicas `r1..` on the fresh database `database_url`, with a short lease
/// (3 s, renewed every 1 s) so takeovers by expiry fit in a test.
fn start_replicas(
    database_url: &str,
    count: usize,
) -> (Vec<ServerProcess>, Vec<tempfile::TempDir>) {
    crate::support::start_replicas(database_url, count, &[])
}

async fn check_master(server: &ServerProcess) -> Option<CheckMaster> {
    let answer = http().get(server.api("/check-master")).send().await.ok()?;
    answer.json().await.ok()
}

/// Polls (at most `within`) until exactly one of `servers` says it is master and every other
/// one names it; answers its index and term.
async fn one_master(servers: &[&ServerProcess], within: Duration) -> (usize, i64) {
    let found: Arc<Mutex<Option<(usize, i64)>>> = Arc::default();
    let agreed = eventually(within, async || {
        let mut answers = Vec::new();
        for server in servers {
            answers.push(check_master(server).await);
        }
        let masters: Vec<usize> = answers
            .iter()
            .enumerate()
            .filter(|(_, answer)| answer.as_ref().is_some_and(|answer| answer.is_master))
            .map(|(index, _)| index)
            .collect();
        let [master] = masters[..] else { return false };
        let master_answer = answers[master].clone().expect("answered");
        let all_agree = answers.iter().all(|answer| {
            answer.as_ref().is_some_and(|answer| {
                answer.master_id == master_answer.master_id
                    && answer.master_url.as_deref() == Some(servers[master].url.as_str())
            })
        });
        if all_agree {
            *found.lock().unwrap() = Some((master, master_answer.term.expect("a term")));
        }
        all_agree
    })
    .await;
    assert!(
        agreed,
        "no single master that every replica names within {within:?}"
    );
    found.lock().unwrap().expect("set when agreed")
}

fn enrol_body(id: &str) -> serde_json::Value {
    json!({"id": id, "roles": ["body"], "district": "bxl1", "venue": "v1", "owner": "acme"})
}

#[tokio::test]
async fn one_master_takes_every_write_forwarded_by_the_others() {
    let url = hydra_store::testing::fresh_postgres_database("replicas_one_master").await;
    let (servers, _dirs) = start_replicas(&url, 3);
    let refs: Vec<&ServerProcess> = servers.iter().collect();
    let (master, term) = one_master(&refs, Duration::from_secs(20)).await;
    assert!(term >= 1);
    // A write through each replica lands (the followers forward it, with the caller's token).
    for (index, server) in servers.iter().enumerate() {
        let id = format!("via-r{}", index + 1);
        let (status, body) = call(Method::POST, &server.api("/nodes"), Some(enrol_body(&id))).await;
        assert_eq!(status, 201, "enrol through r{}: {body}", index + 1);
        let (status, body) = call(
            Method::GET,
            &servers[master].api(&format!("/nodes/{id}")),
            None,
        )
        .await;
        assert_eq!(status, 200, "{id} on the master: {body}");
    }
    // A bad write is refused by the master, through a follower, with its 4xx and field.
    let follower = &servers[(master + 1) % 3];
    let (status, body) = call(
        Method::POST,
        &follower.api("/nodes"),
        Some(json!({"id": "bad id!", "roles": ["body"], "district": "d", "venue": "v", "owner": "o"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    // One hop only: a follower does not forward a write another replica forwarded.
    let answer = http()
        .post(follower.api("/nodes"))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-hydra-forwarded-by", "r9")
        .json(&enrol_body("two-hops"))
        .send()
        .await
        .expect("follower answers");
    assert_eq!(answer.status().as_u16(), 503);
    assert_eq!(
        answer
            .headers()
            .get("retry-after")
            .map(|value| value.to_str().unwrap()),
        Some("1")
    );
    let text = answer.text().await.unwrap();
    assert!(text.contains("one hop") && text.contains("r9"), "{text}");
    // Every replica lists the three, the master once, all healthy.
    let (status, body) = call(Method::GET, &follower.api("/replicas"), None).await;
    assert_eq!(status, 200, "{body}");
    let rows = body.as_array().expect("a list");
    let ids: Vec<&str> = rows.iter().map(|row| row["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["r1", "r2", "r3"]);
    let masters: Vec<&str> = rows
        .iter()
        .filter(|row| row["is_master"] == true)
        .map(|row| row["id"].as_str().unwrap())
        .collect();
    assert_eq!(masters, [format!("r{}", master + 1).as_str()]);
    assert!(rows.iter().all(|row| row["is_healthy"] == true), "{body}");
    // The metrics say who is master and that followers forwarded.
    let metrics = http()
        .get(format!("{}/metrics", follower.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("hydra_replica_is_master 0"), "{metrics}");
    assert!(
        metrics.contains("hydra_replica_forwarded_writes_total"),
        "{metrics}"
    );
    let metrics = http()
        .get(format!("{}/metrics", servers[master].url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("hydra_replica_is_master 1"), "{metrics}");
    assert!(
        metrics.contains("hydra_replica_takeovers_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn killing_the_master_under_load_loses_no_acknowledged_write() {
    let url = hydra_store::testing::fresh_postgres_database("replicas_kill_master").await;
    let (mut servers, _dirs) = start_replicas(&url, 3);
    let refs: Vec<&ServerProcess> = servers.iter().collect();
    let (master, term) = one_master(&refs, Duration::from_secs(20)).await;
    let urls: Vec<String> = servers.iter().map(|server| server.url.clone()).collect();
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let attempted: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut writers = Vec::new();
    for writer in 0..4 {
        let mut config = ClientConfig::new(urls.clone()).with_retry(RetryPolicy::attempts(8));
        config.token = Some(ADMIN_TOKEN.to_owned());
        config.request_timeout = Duration::from_secs(5);
        let client = Client::new(config).expect("client");
        let (acknowledged, attempted, stop) =
            (acknowledged.clone(), attempted.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            // Bounded: at most 2,000 writes per writer.
            for sequence in 0..2_000 {
                if stop.is_cancelled() {
                    break;
                }
                let id = format!("w{writer}-{sequence}");
                attempted.lock().unwrap().insert(id.clone());
                let request = EnrolRequest {
                    id: Some(id.clone()),
                    roles: vec![RoleWire::Body],
                    district: "bxl1".into(),
                    venue: "v1".into(),
                    owner: "acme".into(),
                    ..EnrolRequest::default()
                };
                if client.enrol(&request).await.is_ok() {
                    acknowledged.lock().unwrap().push(id);
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    let count = || acknowledged.lock().unwrap().len();
    assert!(
        eventually(Duration::from_secs(20), async || count() >= 40).await,
        "writes flow before the kill"
    );
    let killed = servers.remove(master);
    let killed_at = Instant::now();
    killed.kill_9();
    let before = count();
    let survivors: Vec<&ServerProcess> = servers.iter().collect();
    let (new_master, new_term) = one_master(&survivors, Duration::from_secs(20)).await;
    let takeover = killed_at.elapsed();
    assert!(
        new_term > term,
        "a takeover makes a new term ({new_term} after {term})"
    );
    assert!(
        eventually(Duration::from_secs(20), async || count() >= before + 40).await,
        "writes are accepted again after the kill"
    );
    stop.cancel();
    for writer in writers {
        writer.await.expect("writer");
    }
    // Every acknowledged write is in the database and on the new master; nothing was applied
    // that was not attempted, and no id twice (each row is one id).
    let store = Store::open_postgres(&url).await.expect("open the database");
    let rows: Vec<String> = store
        .list_nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|node| node.id)
        .collect();
    let stored: BTreeSet<&str> = rows.iter().map(String::as_str).collect();
    assert_eq!(stored.len(), rows.len(), "no id twice");
    let acknowledged = acknowledged.lock().unwrap().clone();
    for id in &acknowledged {
        assert!(stored.contains(id.as_str()), "acknowledged write {id} lost");
    }
    let attempted = attempted.lock().unwrap().clone();
    assert!(
        stored.iter().all(|id| attempted.contains(*id)),
        "a row no writer attempted"
    );
    for id in acknowledged.iter().step_by(25) {
        let (status, _) = call(
            Method::GET,
            &servers[new_master].api(&format!("/nodes/{id}")),
            None,
        )
        .await;
        assert_eq!(status, 200, "{id} on the new master");
    }
    eprintln!(
        "[replicas] takeover seen by the test after {takeover:?}; {} writes acknowledged, {} stored",
        acknowledged.len(),
        stored.len()
    );
}

#[tokio::test]
async fn a_stopped_master_steps_down_by_itself_and_writes_nothing_of_its_old_term() {
    let url = hydra_store::testing::fresh_postgres_database("replicas_sigstop").await;
    let (servers, _dirs) = start_replicas(&url, 2);
    let refs: Vec<&ServerProcess> = servers.iter().collect();
    let (master, term) = one_master(&refs, Duration::from_secs(20)).await;
    let other = &servers[1 - master];
    let stopped = &servers[master];
    let pid = nix::unistd::Pid::from_raw(i32::try_from(stopped.pid()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    // Its session (and advisory lock) lives on: the other replica takes over by expiry.
    let takeover = eventually(Duration::from_secs(20), async || {
        check_master(other)
            .await
            .is_some_and(|answer| answer.is_master && answer.term > Some(term))
    })
    .await;
    if !takeover {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).ok();
    }
    assert!(takeover, "the other replica took the lease once it expired");
    // A write reaches the stopped master (it waits in the socket), then it wakes up.
    let late_write = tokio::spawn({
        let url = stopped.api("/nodes");
        async move { call(Method::POST, &url, Some(enrol_body("late-write"))).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
    let (status, body) = late_write.await.expect("late write answered");
    let stepped_down = eventually(Duration::from_secs(10), async || {
        check_master(stopped)
            .await
            .is_some_and(|answer| !answer.is_master)
    })
    .await;
    assert!(stepped_down, "the woken master stepped down by itself");
    let store = Store::open_postgres(&url).await.expect("open the database");
    let landed = store.get_node("late-write").await.unwrap().is_some();
    // Refused by the fence (503, nothing written) or forwarded to the new master (201, written):
    // never written under the old term and then lost or doubled.
    match status {
        503 => assert!(!landed, "a refused write left a row: {body}"),
        201 => assert!(landed, "an acknowledged write is missing"),
        other => panic!("unexpected answer {other}: {body}"),
    }
    let log = stopped.log.lock().unwrap().clone();
    assert!(log.contains("stepped down"), "{log}");
    // The two agree again on one master, the one that took over.
    let (master_now, term_now) = one_master(&refs, Duration::from_secs(20)).await;
    assert_eq!(master_now, 1 - master);
    assert!(term_now > term);
}

#[tokio::test]
async fn hydra_replicas_prints_the_replicas_and_which_is_master() {
    let url = hydra_store::testing::fresh_postgres_database("replicas_cli").await;
    let (servers, _dirs) = start_replicas(&url, 2);
    let refs: Vec<&ServerProcess> = servers.iter().collect();
    let (master, _) = one_master(&refs, Duration::from_secs(20)).await;
    let all = format!("{},{}", servers[0].url, servers[1].url);
    let run = crate::cli::hydra(
        &[
            ("HYDRA_SERVER", all.as_str()),
            ("HYDRA_TOKEN", crate::support::ADMIN_TOKEN),
        ],
        &["replicas"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows: Vec<Vec<&str>> = run
        .stdout
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["ID", "BASE_URL", "MASTER", "HEALTHY"],
        "{}",
        run.stdout
    );
    for (index, server) in servers.iter().enumerate() {
        let master_word = if index == master { "yes" } else { "no" };
        let expected = [
            format!("r{}", index + 1),
            server.url.clone(),
            master_word.into(),
            "yes".into(),
        ];
        assert_eq!(
            rows[index + 1],
            expected.iter().map(String::as_str).collect::<Vec<_>>(),
            "{}",
            run.stdout
        );
    }
    let run = crate::cli::hydra(
        &[
            ("HYDRA_SERVER", all.as_str()),
            ("HYDRA_TOKEN", crate::support::ADMIN_TOKEN),
        ],
        &["replicas", "--json"],
    )
    .await;
    let listed: Vec<hydra_api::ReplicaInfo> = serde_json::from_str(&run.stdout).expect("JSON list");
    assert_eq!(listed.len(), 2);
}

#[tokio::test]
async fn a_second_server_on_the_same_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = ServerProcess::start(&ServerSetup::sqlite(dir.path()));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hydra"))
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--admin-token",
            ADMIN_TOKEN,
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run a second server");
    assert!(!output.status.success(), "the second server must not start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("another hydra server already uses the SQLite database")
            && stderr.contains("PostgreSQL"),
        "{stderr}"
    );
    // The first one still answers; once it is gone, a server starts on the file again.
    let (status, _) = call(Method::GET, &first.api("/health"), None).await;
    assert_eq!(status, 200);
    first.kill_9();
    let again = ServerProcess::start(&ServerSetup::sqlite(dir.path()));
    let (status, _) = call(Method::GET, &again.api("/health"), None).await;
    assert_eq!(status, 200);
}

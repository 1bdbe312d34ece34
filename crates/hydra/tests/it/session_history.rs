//! Session history (issue 7 item 8): ended sessions past their retention are pruned by the
//! server's background duty; `GET /api/v1/sessions` (and `hydra sessions list`) pages newest
//! first with a cursor and filters by status, worker and head; bad parameters are a 400 naming
//! the parameter.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hydra_store::{SessionRecord, SessionStatus, SessionWrite, Store};
use reqwest::Method;
use serde_json::Value;

use crate::support::{ADMIN_TOKEN, ServerProcess, ServerSetup, call, eventually};

const DAY_MS: i64 = 24 * 3600 * 1000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap()
}

/// 120 sessions in the store before the server starts: index % 4 == 0 ended 8 days ago (past the
/// default 7-day retention), the rest recent or live; created one ms apart, so index orders them.
async fn fill(store: &Store, now: i64) {
    let statuses = [
        SessionStatus::Stopped,
        SessionStatus::Error,
        // Not `running`: these sessions' workers are not enrolled, and the server's sweep ends
        // the live sessions of workers that are gone.
        SessionStatus::Error,
        SessionStatus::Stopped,
    ];
    let writes: Vec<SessionWrite> = (0..120)
        .map(|index| {
            let old = index % 4 == 0;
            let created_at = now - 10 * DAY_MS + index as i64;
            SessionWrite::Insert(SessionRecord {
                id: format!("s-{index:04}"),
                worker_id: format!("w-{}", index % 2),
                body_ip: "10.0.0.1".into(),
                body_id: None,
                head_id: (index % 3 == 0).then(|| "h-1".to_owned()),
                experience: None,
                port: Some(8080),
                stream_url: None,
                status: statuses[index % 4],
                error: None,
                created_at,
                updated_at: if old { now - 8 * DAY_MS } else { now - 1_000 },
            })
        })
        .collect();
    store.write_sessions(&writes).await.expect("write sessions");
}

async fn page(server: &ServerProcess, query: &str) -> Value {
    let (status, answer) = call(Method::GET, &server.api(&format!("/sessions{query}")), None).await;
    assert_eq!(status, 200, "{query}: {answer}");
    answer
}

fn ids(answer: &Value) -> Vec<String> {
    answer["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|session| session["session_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn ended_sessions_are_pruned_and_the_list_pages_newest_first_with_filters() {
    let dir = tempfile::tempdir().expect("temp dir");
    let now = now_ms();
    {
        let store = Store::open_sqlite(&dir.path().join("hydra.db"))
            .await
            .unwrap();
        fill(&store, now).await;
        store.close().await;
    }
    let server = ServerProcess::start(&ServerSetup::sqlite(dir.path()));

    // The 30 old ended sessions go at start (index % 4 == 0: all stopped); the rest stay.
    let pruned = eventually(Duration::from_secs(30), async || {
        page(&server, "?limit=1000").await["sessions"]
            .as_array()
            .unwrap()
            .len()
            == 90
    })
    .await;
    assert!(
        pruned,
        "old ended sessions pruned; server log:\n{}",
        server.log.lock().unwrap()
    );
    let kept: Vec<String> = (0..120)
        .rev()
        .filter(|index| index % 4 != 0)
        .map(|index| format!("s-{index:04}"))
        .collect();

    // Default page: 100 at most, newest first, no cursor when it is the last page.
    let first = page(&server, "").await;
    assert_eq!(ids(&first), kept);
    assert!(first.get("next_cursor").is_none(), "{first}");

    // Walking pages of 7 with the cursor gives every kept session once, in order.
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    for _page in 0..20 {
        let query = match &cursor {
            Some(cursor) => format!("?limit=7&cursor={cursor}"),
            None => "?limit=7".to_owned(),
        };
        let answer = page(&server, &query).await;
        walked.extend(ids(&answer));
        cursor = answer["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(walked, kept);

    // Filters, alone and together.
    let failed: Vec<String> = kept
        .iter()
        .filter(|id| matches!(id[2..].parse::<usize>().unwrap() % 4, 1 | 2))
        .cloned()
        .collect();
    assert_eq!(ids(&page(&server, "?status=error").await), failed);
    let narrow: Vec<String> = kept
        .iter()
        .filter(|id| {
            let index: usize = id[2..].parse().unwrap();
            index % 4 == 1 && index % 2 == 1 && index.is_multiple_of(3)
        })
        .cloned()
        .collect();
    assert!(!narrow.is_empty());
    assert_eq!(
        ids(&page(&server, "?status=error&worker_id=w-1&head_id=h-1").await),
        narrow
    );

    // Bad parameters: 400 naming the parameter.
    for (query, named) in [
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?status=done", "status"),
        ("?cursor=yesterday", "cursor"),
        ("?sort=asc", "sort"),
        ("?worker_id=w%00", "worker_id"),
    ] {
        let (status, answer) =
            call(Method::GET, &server.api(&format!("/sessions{query}")), None).await;
        assert_eq!(status, 400, "{query}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(named),
            "{query}: {answer}"
        );
    }

    // The CLI: a page as a table with where the next one starts, and as JSON.
    let run = |args: Vec<String>| {
        let url = server.url.clone();
        async move {
            let output = tokio::time::timeout(
                Duration::from_secs(30),
                tokio::process::Command::new(env!("CARGO_BIN_EXE_hydra"))
                    .args(&args)
                    .env("HYDRA_SERVER", url)
                    .env("HYDRA_TOKEN", ADMIN_TOKEN)
                    .env("RUST_LOG", "warn")
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .expect("hydra within 30 s")
            .expect("run hydra");
            assert!(
                output.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8(output.stdout).unwrap()
        }
    };
    let table = run([
        "sessions", "list", "--status", "error", "--worker", "w-0", "--limit", "2",
    ]
    .map(String::from)
    .to_vec())
    .await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("STATUS"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("s-0118") && lines[2].starts_with("s-0114"),
        "{table}"
    );
    assert!(lines[3].starts_with("more: --cursor "), "{table}");
    let cursor = lines[3].trim_start_matches("more: --cursor ").to_owned();
    let json: Value = serde_json::from_str(
        &run(vec![
            "sessions".into(),
            "list".into(),
            "--status".into(),
            "error".into(),
            "--worker".into(),
            "w-0".into(),
            "--limit".into(),
            "2".into(),
            "--cursor".into(),
            cursor,
            "--json".into(),
        ])
        .await,
    )
    .unwrap();
    assert_eq!(ids(&json), ["s-0110", "s-0106"]);
    let shown: Value = serde_json::from_str(
        &run(["sessions", "show", "s-0110", "--json"]
            .map(String::from)
            .to_vec())
        .await,
    )
    .unwrap();
    assert_eq!(shown["status"], "error");
}

//! `hydra nodes drain W --wait [--deadline 10m] [--notice 30s]`: after the drain, follow the
//! worker's running sessions until the last one ends, printing an estimate from their ages
//! (`hydra_core::drain`); past the deadline, tell each session's page that its stream ends in
//! `--notice`, then end the sessions. The decisions are `hydra_core::drain`'s; this is the I/O.

use std::time::Duration;

use hydra_api::{SessionQuery, SessionState, SessionView};
use hydra_client::Client;
use hydra_core::drain::{DrainStep, drain_estimate, drain_step};

use crate::output::{print, print_json};

/// How often the sessions are looked at.
const POLL: Duration = Duration::from_secs(1);

/// Most pages of sessions read per look (1,000 each).
const MAX_PAGES: usize = 100;

/// What the follower was told.
#[derive(Debug, Clone, Copy)]
pub struct Follow {
    /// After this long, the sessions left are ended (after the notice).
    pub deadline: Option<Duration>,
    /// How long the pages are told before their sessions end.
    pub notice: Duration,
    /// Print JSON lines instead of sentences.
    pub json: bool,
}

/// Follows `worker_id`'s starting and running sessions until none is left.
pub async fn follow(client: &Client, worker_id: &str, follow: Follow) -> anyhow::Result<()> {
    let started = hydra_api::now_ms();
    let deadline_at = follow
        .deadline
        .map(|deadline| started.saturating_add(millis(deadline)));
    let notice_ms = millis(follow.notice);
    let mut notified_at = None;
    let mut last_said = String::new();
    loop {
        let sessions = live_sessions(client, worker_id).await?;
        let now = hydra_api::now_ms();
        let ages: Vec<i64> = sessions
            .iter()
            .map(|session| started_at(session, now))
            .collect();
        let estimate = drain_estimate(now, &ages, deadline_at);
        let line = if follow.json {
            serde_json::json!({
                "worker_id": worker_id,
                "sessions_left": estimate.sessions_left,
                "expected_end": hydra_api::rfc3339(estimate.expected_end),
                "by_deadline": estimate.by_deadline,
            })
            .to_string()
        } else {
            estimate_sentence(
                worker_id,
                estimate.sessions_left,
                estimate.expected_end - now,
                estimate.by_deadline,
            )
        };
        if line != last_said {
            if follow.json {
                print_json(&serde_json::from_str::<serde_json::Value>(&line)?)?;
            } else {
                print(&format!("{line}\n"));
            }
            last_said = line;
        }
        match drain_step(now, sessions.len(), deadline_at, notified_at, notice_ms) {
            DrainStep::Done => return Ok(()),
            DrainStep::Wait => tokio::time::sleep(POLL).await,
            DrainStep::Notify => {
                let ends_in_s = u32::try_from(follow.notice.as_secs().max(1)).unwrap_or(u32::MAX);
                let mut told = 0;
                for session in &sessions {
                    match client.notice_session(&session.session_id, ends_in_s).await {
                        Ok(_) => told += 1,
                        Err(error) => {
                            tracing::warn!(session_id = %session.session_id, %error, "[drain] cannot tell the session's page")
                        }
                    }
                }
                if !follow.json {
                    print(&format!(
                        "deadline reached: told {told} of {} session pages the stream ends in {ends_in_s} s\n",
                        sessions.len()
                    ));
                }
                notified_at = Some(now);
            }
            DrainStep::End => {
                for session in &sessions {
                    if let Err(error) = client.end_session(&session.session_id).await {
                        tracing::warn!(session_id = %session.session_id, %error, "[drain] cannot end the session");
                    }
                }
                if !follow.json {
                    print(&format!(
                        "ended {} sessions at the deadline\n",
                        sessions.len()
                    ));
                }
            }
        }
    }
}

/// "node W: N sessions left, done in about M (from the sessions' ages)", or "... at the deadline".
fn estimate_sentence(worker_id: &str, left: usize, in_ms: i64, by_deadline: bool) -> String {
    if left == 0 {
        return format!("node {worker_id} is drained: no session left");
    }
    let about = humantime::format_duration(Duration::from_secs(
        u64::try_from(in_ms.max(0)).unwrap_or(0).div_ceil(60_000) * 60,
    ));
    let why = if by_deadline {
        "at the deadline"
    } else {
        "estimated from the sessions' ages"
    };
    format!("node {worker_id}: {left} sessions left; done in about {about} ({why})")
}

/// Every starting or running session of `worker_id`.
async fn live_sessions(client: &Client, worker_id: &str) -> anyhow::Result<Vec<SessionView>> {
    let mut sessions = Vec::new();
    for status in [SessionState::Starting, SessionState::Running] {
        let mut cursor = None;
        for _ in 0..MAX_PAGES {
            let query = SessionQuery {
                status: Some(status),
                worker_id: Some(worker_id.to_owned()),
                head_id: None,
                limit: Some(1_000),
                cursor: cursor.take(),
            };
            let page = client.sessions_page(&query).await.map_err(|error| {
                anyhow::anyhow!("cannot list the sessions of {worker_id}: {error}")
            })?;
            sessions.extend(page.sessions);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
    }
    Ok(sessions)
}

/// When `session` started (unix ms); `now` when its time cannot be read.
fn started_at(session: &SessionView, now: i64) -> i64 {
    humantime::parse_rfc3339_weak(&session.created_at)
        .ok()
        .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|since| i64::try_from(since.as_millis()).ok())
        .unwrap_or(now)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::estimate_sentence;

    #[test]
    fn the_estimate_reads_as_a_sentence() {
        let lines = [
            estimate_sentence("w-1", 2, 14 * 60_000 + 1, false),
            estimate_sentence("w-1", 1, 90_000, true),
            estimate_sentence("w-1", 0, 0, false),
        ];
        expect_test::expect![[r#"
            [
                "node w-1: 2 sessions left; done in about 15m (estimated from the sessions' ages)",
                "node w-1: 1 sessions left; done in about 2m (at the deadline)",
                "node w-1 is drained: no session left",
            ]
        "#]]
        .assert_debug_eq(&lines);
    }
}

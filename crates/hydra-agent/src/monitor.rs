//! The agent's monitor feed (`GET /api/v1/monitor`, issue 12): what the node is doing, as NDJSON
//! over chunked HTTP, one `hydra_api::captures::MonitorLine` per line: the agent's own log events
//! ([`MonitorLayer`], installed by the binary's logging set-up), each session process's output
//! lines tagged with the session, and events (session started, ended, error; health changes)
//! from [`watch`].
//!
//! NDJSON rather than SSE: the reader is a program (the server's capture writer, `curl`), not a
//! browser; a line is one JSON object that is stored and served again as is, with no `data:`
//! framing to add and strip.
//!
//! A slow reader never slows the agent: lines go into a bounded broadcast ([`CAPACITY`]) that
//! never waits; a reader that falls behind loses the oldest lines, and its stream says how many
//! (`{"kind":"dropped","dropped":N,"message":"dropped: N"}`) before the next line it gets.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use hydra_api::captures::{MonitorFilters, MonitorKind, MonitorLine};
use hydra_core::capture::{FeedFilter, level_rank};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Lines kept for readers that fall behind; past it the oldest are dropped for them.
pub const CAPACITY: usize = 16 * 1024;
/// Most lines written in one HTTP chunk.
const LINES_PER_CHUNK: usize = 512;
/// An empty line is sent after this long without one, so a reader can tell a quiet node from a
/// dead connection.
const KEEPALIVE: Duration = Duration::from_secs(5);
/// Longest output line kept from a session process; the rest is cut.
const MAX_OUTPUT_LINE: usize = 8 * 1024;

/// One node's monitor feed: a sequence number and a bounded broadcast.
#[derive(Debug)]
pub struct MonitorFeed {
    next_seq: Mutex<u64>,
    /// Made by the first reader: the ring's [`CAPACITY`] slots (about 640 KiB) are allocated and
    /// written up front, and a node nobody captures never needs them. Before it, a line has no
    /// reader and is not kept, as a broadcast without receivers does not keep it either.
    sender: OnceLock<broadcast::Sender<Arc<MonitorLine>>>,
}

impl MonitorFeed {
    /// A feed numbering its lines from 1.
    pub fn new() -> Arc<MonitorFeed> {
        Arc::new(MonitorFeed {
            next_seq: Mutex::new(1),
            sender: OnceLock::new(),
        })
    }

    /// Whether anyone reads the feed now (nothing is formatted otherwise).
    pub fn has_readers(&self) -> bool {
        self.sender
            .get()
            .is_some_and(|sender| sender.receiver_count() > 0)
    }

    /// Emits a line now; never waits. Lines are numbered in the order readers get them.
    pub fn publish(
        &self,
        kind: MonitorKind,
        level: Option<&str>,
        session: Option<String>,
        message: String,
    ) {
        let ms = hydra_api::now_ms();
        // The number is taken and the line sent under one lock, so sequence order is send order.
        let mut next = self.next_seq.lock().expect("monitor sequence poisoned");
        let line = MonitorLine {
            seq: *next,
            time: hydra_api::rfc3339(ms),
            ms,
            kind,
            level: level.map(str::to_owned),
            session,
            message,
            dropped: None,
        };
        *next += 1;
        // No reader is not an error: the line is simply not kept.
        if let Some(sender) = self.sender.get() {
            let _ = sender.send(Arc::new(line));
        }
    }

    /// A new reader, from the next line on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<MonitorLine>> {
        self.sender
            .get_or_init(|| broadcast::channel(CAPACITY).0)
            .subscribe()
    }
}

/// Whether any feed was ever attached: a process that runs no agent (the server, the CLI) skips
/// the layer's lock on every event.
static ANY_ATTACHED: AtomicBool = AtomicBool::new(false);

/// The feeds the tracing layer writes to (every agent of the process; one in production).
fn log_feeds() -> &'static Mutex<Vec<Weak<MonitorFeed>>> {
    static FEEDS: OnceLock<Mutex<Vec<Weak<MonitorFeed>>>> = OnceLock::new();
    FEEDS.get_or_init(|| Mutex::new(Vec::new()))
}

/// From now on, the process's log events (through [`MonitorLayer`]) also go to `feed`, until it
/// is dropped.
pub fn attach_logs(feed: &Arc<MonitorFeed>) {
    ANY_ATTACHED.store(true, Ordering::Relaxed);
    let mut feeds = log_feeds().lock().expect("monitor feeds poisoned");
    feeds.retain(|kept| kept.strong_count() > 0);
    feeds.push(Arc::downgrade(feed));
}

/// A tracing layer that copies every log event into the attached monitor feeds; installed by the
/// binary's logging set-up beside the formatter. An event with a `session_id` field is tagged
/// with that session; its other fields follow the message as `key=value`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MonitorLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for MonitorLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _context: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if !ANY_ATTACHED.load(Ordering::Relaxed) {
            return;
        }
        let feeds: Vec<Arc<MonitorFeed>> = {
            let feeds = log_feeds().lock().expect("monitor feeds poisoned");
            feeds
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|feed| feed.has_readers())
                .collect()
        };
        if feeds.is_empty() {
            return;
        }
        let mut visitor = FieldText::default();
        event.record(&mut visitor);
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        let message = if visitor.fields.is_empty() {
            visitor.message
        } else {
            format!("{} {}", visitor.message, visitor.fields)
        };
        for feed in feeds {
            feed.publish(
                MonitorKind::Log,
                Some(&level),
                visitor.session.clone(),
                message.clone(),
            );
        }
    }
}

/// An event's message, session and other fields as text.
#[derive(Default)]
struct FieldText {
    message: String,
    session: Option<String>,
    fields: String,
}

impl tracing::field::Visit for FieldText {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.record(field.name(), value.to_owned());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.record(field.name(), format!("{value:?}"));
    }
}

impl FieldText {
    fn record(&mut self, name: &str, value: String) {
        match name {
            "message" => self.message = value,
            "session_id" => {
                self.push_field(name, &value);
                self.session = Some(value);
            }
            _ => self.push_field(name, &value),
        }
    }

    fn push_field(&mut self, name: &str, value: &str) {
        if !self.fields.is_empty() {
            self.fields.push(' ');
        }
        self.fields.push_str(name);
        self.fields.push('=');
        self.fields.push_str(value);
    }
}

/// Checks a reader's filters: the `level` word must be known (the error names the field).
pub fn feed_filter(filters: &MonitorFilters) -> Result<FeedFilter, String> {
    let level = match filters.level.as_deref() {
        None => None,
        Some(word) => Some(level_rank(word).ok_or_else(|| {
            format!("level: unknown level {word:?} (error, warn, info, debug or trace)")
        })?),
    };
    Ok(FeedFilter {
        level,
        session: filters
            .session
            .clone()
            .filter(|session| !session.is_empty()),
        contains: filters.contains.clone().filter(|text| !text.is_empty()),
    })
}

/// The streamed answer of `GET /api/v1/monitor`: from the next line on, filtered, until the
/// reader goes or the agent stops.
pub fn stream_response(
    feed: &MonitorFeed,
    filter: FeedFilter,
    shutdown: CancellationToken,
) -> Response {
    let receiver = feed.subscribe();
    let state = Reader {
        receiver,
        filter,
        dropped: 0,
        shutdown,
    };
    let body = futures::stream::unfold(state, |mut reader| async move {
        let chunk = reader.next_chunk().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(chunk), reader))
    });
    let mut response = Body::from_stream(body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// One reader of the feed.
struct Reader {
    receiver: broadcast::Receiver<Arc<MonitorLine>>,
    filter: FeedFilter,
    /// Lines lost since the last line sent, announced before the next one.
    dropped: u64,
    shutdown: CancellationToken,
}

impl Reader {
    /// The next chunk of lines: waits for one line (or sends a keep-alive), then takes what is
    /// already there, up to [`LINES_PER_CHUNK`]. `None` ends the stream.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        let mut out = Vec::with_capacity(4096);
        let first = tokio::select! {
            _ = self.shutdown.cancelled() => return None,
            received = tokio::time::timeout(KEEPALIVE, self.receiver.recv()) => received,
        };
        match first {
            Err(_idle) => return Some(Bytes::from_static(b"\n")),
            Ok(received) => {
                if !self.take(received, &mut out) {
                    return None;
                }
            }
        }
        for _ in 1..LINES_PER_CHUNK {
            match self.receiver.try_recv() {
                Ok(line) => {
                    self.take(Ok(line), &mut out);
                }
                Err(broadcast::error::TryRecvError::Lagged(count)) => self.dropped += count,
                Err(_) => break,
            }
        }
        if out.is_empty() {
            // Everything was filtered out: an empty line keeps the stream moving.
            out.push(b'\n');
        }
        Some(Bytes::from(out))
    }

    /// Writes a received line (after the dropped announcement it owes); `false` when the feed
    /// closed.
    fn take(
        &mut self,
        received: Result<Arc<MonitorLine>, broadcast::error::RecvError>,
        out: &mut Vec<u8>,
    ) -> bool {
        let line = match received {
            Ok(line) => line,
            Err(broadcast::error::RecvError::Lagged(count)) => {
                self.dropped += count;
                return true;
            }
            Err(broadcast::error::RecvError::Closed) => return false,
        };
        if self.dropped > 0 {
            let announcement = MonitorLine {
                seq: line.seq,
                time: line.time.clone(),
                ms: line.ms,
                kind: MonitorKind::Dropped,
                level: None,
                session: None,
                message: format!("dropped: {}", self.dropped),
                dropped: Some(self.dropped),
            };
            self.dropped = 0;
            write_line(&announcement, out);
        }
        if self.filter.keeps(
            line.level.as_deref(),
            line.session.as_deref(),
            &line.message,
        ) {
            write_line(&line, out);
        }
        true
    }
}

fn write_line(line: &MonitorLine, out: &mut Vec<u8>) {
    if serde_json::to_writer(&mut *out, line).is_ok() {
        out.push(b'\n');
    }
}

/// What [`watch`] looks at each round.
pub struct Watched {
    /// The worker, if the agent runs one.
    pub worker: Option<Arc<crate::worker::Worker>>,
    /// Where session data dirs are (each holds its process's output log).
    pub sessions_root: PathBuf,
    /// The health word now (`ok`, `degraded`).
    pub health: Box<dyn Fn() -> &'static str + Send + Sync>,
}

/// Runs until `shutdown`: every 250 ms, publishes what changed as events (a session started,
/// ended or failed; the health word changed) and the new output lines of each session process,
/// tagged with its session. Reads nothing while no one reads the feed.
pub async fn watch(feed: Arc<MonitorFeed>, watched: Watched, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sessions: HashMap<String, hydra_api::SessionState> = HashMap::new();
    let mut offsets: HashMap<String, u64> = HashMap::new();
    let mut health = (watched.health)();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now_health = (watched.health)();
        if now_health != health {
            let level = if now_health == "ok" { "info" } else { "warn" };
            feed.publish(
                MonitorKind::Event,
                Some(level),
                None,
                format!("health changed: {health} -> {now_health}"),
            );
            health = now_health;
        }
        let Some(worker) = &watched.worker else {
            continue;
        };
        let snapshot = worker.snapshot();
        let mut seen = HashMap::with_capacity(snapshot.len());
        for session in &snapshot {
            let status = session.status;
            match sessions.get(&session.id) {
                None => feed.publish(
                    MonitorKind::Event,
                    Some("info"),
                    Some(session.id.clone()),
                    format!("session started: {}", status.as_str()),
                ),
                Some(before) if *before != status => {
                    let (level, what) = match status {
                        hydra_api::SessionState::Error => ("warn", "session error"),
                        hydra_api::SessionState::Stopped => ("info", "session ended"),
                        _ => ("info", "session changed"),
                    };
                    let detail = session.error.clone().unwrap_or_default();
                    feed.publish(
                        MonitorKind::Event,
                        Some(level),
                        Some(session.id.clone()),
                        format!(
                            "{what}: {}{}{detail}",
                            status.as_str(),
                            if detail.is_empty() { "" } else { ": " }
                        ),
                    );
                }
                Some(_) => {}
            }
            seen.insert(session.id.clone(), status);
            if feed.has_readers() {
                let offset = offsets.entry(session.id.clone()).or_insert(0);
                let log = watched
                    .sessions_root
                    .join(&session.id)
                    .join(crate::worker::process::LOG_FILE);
                publish_new_output(&feed, &session.id, &log, offset).await;
            }
        }
        for (id, _) in sessions.iter().filter(|(id, _)| !seen.contains_key(*id)) {
            feed.publish(
                MonitorKind::Event,
                Some("info"),
                Some(id.clone()),
                "session ended: gone".to_owned(),
            );
            offsets.remove(id);
        }
        sessions = seen;
    }
}

/// Publishes the whole lines `log` gained past `offset` (at most 1 MiB a round) and moves the
/// offset past them.
async fn publish_new_output(feed: &MonitorFeed, session_id: &str, log: &PathBuf, offset: &mut u64) {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Ok(mut file) = tokio::fs::File::open(log).await else {
        return;
    };
    if file.seek(std::io::SeekFrom::Start(*offset)).await.is_err() {
        return;
    }
    let mut buffer = Vec::new();
    if (&mut file)
        .take(1024 * 1024)
        .read_to_end(&mut buffer)
        .await
        .is_err()
    {
        return;
    }
    let Some(last_newline) = buffer.iter().rposition(|byte| *byte == b'\n') else {
        return;
    };
    for raw in buffer[..last_newline].split(|byte| *byte == b'\n') {
        let cut = &raw[..raw.len().min(MAX_OUTPUT_LINE)];
        let text = String::from_utf8_lossy(cut)
            .trim_end_matches('\r')
            .to_owned();
        feed.publish(MonitorKind::Output, None, Some(session_id.to_owned()), text);
    }
    *offset += u64::try_from(last_newline + 1).unwrap_or(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_before_the_first_reader_are_numbered_not_kept_and_a_reader_gets_what_follows() {
        let feed = MonitorFeed::new();
        assert!(!feed.has_readers());
        feed.publish(MonitorKind::Log, Some("INFO"), None, "before".into());
        let mut reader = feed.subscribe();
        assert!(feed.has_readers());
        feed.publish(MonitorKind::Log, Some("INFO"), None, "after".into());
        let line = reader.try_recv().expect("the line after subscribing");
        assert_eq!((line.seq, line.message.as_str()), (2, "after"));
        assert!(
            reader.try_recv().is_err(),
            "nothing else, the line before is not kept"
        );
        drop(reader);
        assert!(!feed.has_readers());
    }
}

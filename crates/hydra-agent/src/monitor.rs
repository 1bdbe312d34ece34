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
//!
//! A reader that comes back (a capture writer on a restarted server or a new master) asks for
//! the lines `after` the last one it stored: the feed keeps its last [`CAPACITY`] lines, and keeps
//! numbering lines for [`HOLD`] after the last reader left, so a short absence loses nothing; what
//! is no longer kept is announced as `dropped: N`.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
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
/// How long lines are still numbered and kept after the last reader left: a capture writer
/// that reconnects within it (a restarted server, a new master) gets them with `after`.
pub const HOLD: Duration = Duration::from_secs(60);

/// One node's monitor feed: a sequence number, the last lines and a bounded broadcast.
#[derive(Debug)]
pub struct MonitorFeed {
    numbered: Mutex<Numbered>,
    /// Made by the first reader: its ring of `CAPACITY` slots is not allocated on a node that
    /// nobody monitors.
    sender: OnceLock<broadcast::Sender<Arc<MonitorLine>>>,
    /// When the last reader left (unix ms); `i64::MIN` while none ever left.
    last_reader_left_ms: AtomicI64,
}

/// The sequence and the kept lines, changed together so a reader joining with `after` gets
/// every line once: from the kept ones or from the broadcast, never both, never neither.
#[derive(Debug)]
struct Numbered {
    next_seq: u64,
    kept: VecDeque<Arc<MonitorLine>>,
}

impl MonitorFeed {
    /// A feed numbering its lines from 1.
    pub fn new() -> Arc<MonitorFeed> {
        Arc::new(MonitorFeed {
            numbered: Mutex::new(Numbered {
                next_seq: 1,
                kept: VecDeque::new(),
            }),
            sender: OnceLock::new(),
            last_reader_left_ms: AtomicI64::new(i64::MIN),
        })
    }

    /// Whether anyone reads the feed now, or did less than [`HOLD`] ago (nothing is formatted
    /// otherwise).
    pub fn has_readers(&self) -> bool {
        if self
            .sender
            .get()
            .is_some_and(|sender| sender.receiver_count() > 0)
        {
            return true;
        }
        let left = self.last_reader_left_ms.load(Ordering::Relaxed);
        let hold_ms = i64::try_from(HOLD.as_millis()).unwrap_or(i64::MAX);
        left != i64::MIN && hydra_api::now_ms().saturating_sub(left) < hold_ms
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
        // The number is taken, the line kept and sent under one lock, so sequence order is send
        // order and a reader joining with `after` misses nothing between the two.
        let mut numbered = self.numbered.lock().expect("monitor sequence poisoned");
        let line = MonitorLine {
            seq: numbered.next_seq,
            time: hydra_api::rfc3339(ms),
            ms,
            kind,
            level: level.map(str::to_owned),
            session,
            message,
            dropped: None,
        };
        numbered.next_seq += 1;
        let line = Arc::new(line);
        if numbered.kept.len() >= CAPACITY {
            numbered.kept.pop_front();
        }
        numbered.kept.push_back(Arc::clone(&line));
        // No reader is not an error: the line is kept for a reader that comes back.
        if let Some(sender) = self.sender.get() {
            let _ = sender.send(line);
        }
    }

    /// A new reader, from the next line on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<MonitorLine>> {
        self.sender().subscribe()
    }

    /// The broadcast, made at the first call.
    fn sender(&self) -> &broadcast::Sender<Arc<MonitorLine>> {
        self.sender.get_or_init(|| broadcast::channel(CAPACITY).0)
    }

    /// A reader coming back after line `after`: the kept lines past it, how many lines past it
    /// are no longer kept, and the broadcast from the next line on. A sequence this feed never
    /// reached (the agent restarted since) gets every kept line; the lines of the earlier run
    /// past `after` cannot be known, only this run's lines no longer kept are counted.
    pub fn subscribe_after(
        &self,
        after: u64,
    ) -> (
        VecDeque<Arc<MonitorLine>>,
        u64,
        broadcast::Receiver<Arc<MonitorLine>>,
    ) {
        let numbered = self.numbered.lock().expect("monitor sequence poisoned");
        let receiver = self.sender().subscribe();
        let oldest_kept = numbered
            .kept
            .front()
            .map_or(numbered.next_seq, |line| line.seq);
        let from = if after >= numbered.next_seq { 0 } else { after };
        let lost = oldest_kept.saturating_sub(from.saturating_add(1));
        let backlog = numbered
            .kept
            .iter()
            .filter(|line| line.seq > from)
            .cloned()
            .collect();
        (backlog, lost, receiver)
    }

    fn reader_left(&self) {
        self.last_reader_left_ms
            .store(hydra_api::now_ms(), Ordering::Relaxed);
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

/// The streamed answer of `GET /api/v1/monitor`: from the next line on (or from the line after
/// `after`, as far as it is kept; the rest announced as dropped), filtered, until the reader goes
/// or the agent stops.
pub fn stream_response(
    feed: &Arc<MonitorFeed>,
    filter: FeedFilter,
    after: Option<u64>,
    shutdown: CancellationToken,
) -> Response {
    let (backlog, lost, receiver) = match after {
        Some(after) => feed.subscribe_after(after),
        None => (VecDeque::new(), 0, feed.subscribe()),
    };
    let state = Reader {
        receiver,
        backlog,
        filter,
        dropped: lost,
        shutdown,
        feed: Arc::clone(feed),
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
    /// Kept lines a returning reader gets first.
    backlog: VecDeque<Arc<MonitorLine>>,
    filter: FeedFilter,
    /// Lines lost since the last line sent, announced before the next one.
    dropped: u64,
    shutdown: CancellationToken,
    feed: Arc<MonitorFeed>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.feed.reader_left();
    }
}

impl Reader {
    /// The next chunk of lines: the backlog first, then waits for one line (or sends a
    /// keep-alive) and takes what is already there, up to [`LINES_PER_CHUNK`]. `None` ends the
    /// stream.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        let mut out = Vec::with_capacity(4096);
        if !self.backlog.is_empty() {
            for _ in 0..LINES_PER_CHUNK {
                let Some(line) = self.backlog.pop_front() else {
                    break;
                };
                self.take(Ok(line), &mut out);
            }
            if out.is_empty() {
                out.push(b'\n');
            }
            return Some(Bytes::from(out));
        }
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

//! The agent's write journal: the writes it owes the control plane (heartbeats, worker reports)
//! while no master answers go to a bounded file in the state dir instead, one JSON line per
//! write with a write id (a UUID), appended and fsynced one by one; when a master is back they
//! are replayed in order with their ids (`Idempotency-Key`), so the server applies each once even
//! when a replay is cut short (a lost answer, a kill -9) and repeated.
//!
//! Beyond `journal.max_entries` the oldest coalescible writes go first (`hydra_core::journal`)
//! and are counted. A replay first drops the writes older than the server's memory of write ids
//! (`hydra_core::journal::expired`: a week less an hour), with one WARN and their count, since
//! replaying them could apply them twice. A file that does not read back is named in an error and set aside
//! (`journal.jsonl.corrupt-<unix ms>`), never used and never deleted.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use hydra_api::{HeartbeatRequest, WorkerReport};
use hydra_client::{Client, ClientError};
use hydra_core::journal::{DeferredWrite, expired, make_room};
use serde::{Deserialize, Serialize};

/// The journal's file in the state dir.
pub const JOURNAL_FILE: &str = "journal.jsonl";

/// The journal's bound when the configuration names none.
pub const DEFAULT_MAX_ENTRIES: usize = 1_000;

/// A write the agent owes the control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
pub enum Write {
    /// `POST /api/v1/nodes/{node_id}/heartbeat`.
    Heartbeat(HeartbeatRequest),
    /// `POST /api/v1/workers/{node_id}/report`.
    WorkerReport(WorkerReport),
}

impl Write {
    fn kind(&self) -> DeferredWrite {
        match self {
            Write::Heartbeat(_) => DeferredWrite::Heartbeat,
            Write::WorkerReport(_) => DeferredWrite::WorkerReport,
        }
    }
}

/// One journaled write: its id, when it was deferred, for which node, and the write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The write id sent as `Idempotency-Key` (a UUID).
    pub write_id: String,
    /// When the write was deferred (unix ms).
    pub at_ms: i64,
    /// The node the write is about.
    pub node_id: String,
    /// The write.
    #[serde(flatten)]
    pub write: Write,
}

/// Why the journal file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file (or its directory) cannot be read or written.
    #[error("write journal {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file does not read back as a journal; it was renamed to `set_aside`.
    #[error(
        "the write journal {path} is corrupt ({detail}); set aside as {set_aside}, starting an empty journal"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong (which line).
        detail: String,
        /// Where it is now.
        set_aside: PathBuf,
    },
}

/// How a replay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Writes the server took (applied now, or already applied before).
    pub sent: usize,
    /// Writes the server refused for good (e.g. the node was removed), logged and not kept.
    pub refused: usize,
    /// How long the replay took, in ms.
    pub elapsed_ms: u64,
}

struct Inner {
    entries: VecDeque<Entry>,
    file: File,
    dropped: u64,
}

/// The journal: the entries in memory and on disk, the same, oldest first.
pub struct Journal {
    dir: PathBuf,
    path: PathBuf,
    max_entries: usize,
    inner: Mutex<Inner>,
    /// One replay at a time (the heartbeat loop and the health checker both start one).
    replaying: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Journal")
            .field("path", &self.path)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |error| JournalError::Io {
        path: path.to_owned(),
        error,
    }
}

/// Reads a JSON-lines file of this journal's format (also the session records' journal,
/// `crate::reports`): every line one `T`, the file ending with a newline, else an error naming
/// the line. The first line that is not an entry (a torn or edited file) makes the whole file
/// corrupt: replaying part of it could reorder what the server sees.
pub(crate) fn read_lines<T: serde::de::DeserializeOwned>(text: &[u8]) -> Result<Vec<T>, String> {
    if !text.is_empty() && !text.ends_with(b"\n") {
        return Err("the last line is cut short".to_owned());
    }
    let text = std::str::from_utf8(text).map_err(|error| format!("not UTF-8: {error}"))?;
    text.lines()
        .enumerate()
        .map(|(index, line)| {
            serde_json::from_str::<T>(line).map_err(|error| format!("line {}: {error}", index + 1))
        })
        .collect()
}

/// Opens the JSON-lines file `file_name` of `dir` (creating both when missing): its entries and
/// the file open for appending. A file that does not read back is renamed to
/// `<file_name>.corrupt-<now_ms>` and reported beside the empty list that replaces it.
pub(crate) fn open_lines<T: serde::de::DeserializeOwned>(
    dir: &Path,
    file_name: &str,
    now_ms: i64,
) -> Result<(Vec<T>, File, Option<JournalError>), JournalError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let path = dir.join(file_name);
    let (entries, corrupt) = match std::fs::read(&path) {
        Ok(text) => match read_lines(&text) {
            Ok(entries) => (entries, None),
            Err(detail) => {
                let set_aside = dir.join(format!("{file_name}.corrupt-{now_ms}"));
                std::fs::rename(&path, &set_aside).map_err(io_error(&path))?;
                (
                    Vec::new(),
                    Some(JournalError::Corrupt {
                        path: path.clone(),
                        detail,
                        set_aside,
                    }),
                )
            }
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => (Vec::new(), None),
        Err(error) => return Err(JournalError::Io { path, error }),
    };
    let file = open_append(&path)?;
    Ok((entries, file, corrupt))
}

/// Appends `entry` as one line to `file` (at `path`) and fsyncs it before returning.
pub(crate) fn append_line<T: Serialize>(
    file: &mut File,
    path: &Path,
    entry: &T,
) -> Result<(), JournalError> {
    let mut line = serde_json::to_vec(entry).map_err(|error| JournalError::Io {
        path: path.to_owned(),
        error: std::io::Error::other(error),
    })?;
    line.push(b'\n');
    file.write_all(&line)
        .and_then(|()| file.sync_data())
        .map_err(io_error(path))
}

/// Replaces `file_name` in `dir` with `entries` atomically (temp file, fsync, rename, fsync of
/// the dir); answers the new file open for appending.
pub(crate) fn replace_lines<'a, T: Serialize + 'a>(
    dir: &Path,
    file_name: &str,
    entries: impl IntoIterator<Item = &'a T>,
) -> Result<File, JournalError> {
    let temp = dir.join(format!("{file_name}.tmp"));
    let path = dir.join(file_name);
    let mut text = Vec::new();
    for entry in entries {
        serde_json::to_writer(&mut text, entry).map_err(|error| JournalError::Io {
            path: temp.clone(),
            error: std::io::Error::other(error),
        })?;
        text.push(b'\n');
    }
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .map_err(io_error(&temp))?;
        file.write_all(&text)
            .and_then(|()| file.sync_all())
            .map_err(io_error(&temp))?;
    }
    std::fs::rename(&temp, &path).map_err(io_error(&path))?;
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(dir))?;
    open_append(&path)
}

impl Journal {
    /// Opens (creating when missing) the journal of `state_dir`, bounded to `max_entries`. A
    /// corrupt file is renamed to `journal.jsonl.corrupt-<now_ms>` and reported beside the
    /// empty journal that replaces it (the caller logs it as an ERROR).
    pub fn open(
        state_dir: &Path,
        max_entries: usize,
        now_ms: i64,
    ) -> Result<(Journal, Option<JournalError>), JournalError> {
        let (entries, file, corrupt) = open_lines::<Entry>(state_dir, JOURNAL_FILE, now_ms)?;
        let path = state_dir.join(JOURNAL_FILE);
        let journal = Journal {
            dir: state_dir.to_owned(),
            path,
            max_entries: max_entries.max(1),
            inner: Mutex::new(Inner {
                entries: entries.into(),
                file,
                dropped: 0,
            }),
            replaying: tokio::sync::Mutex::new(()),
        };
        Ok((journal, corrupt))
    }

    /// The journal's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes waiting to be replayed.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether nothing waits to be replayed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes dropped since the agent started: to keep within the bound, or too old to replay.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// The waiting writes, oldest first.
    pub fn entries(&self) -> Vec<Entry> {
        self.lock().entries.iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("journal lock poisoned")
    }

    /// Defers `write` about `node_id`: appended and fsynced before this returns (after making
    /// room within the bound, which rewrites the file). `random` gives the write id's bits.
    pub fn append(
        &self,
        node_id: &str,
        write: Write,
        now_ms: i64,
        random: u128,
    ) -> Result<(), JournalError> {
        let entry = Entry {
            write_id: hydra_api::write_id::format_write_id(hydra_api::write_id::random_write_id(
                random,
            )),
            at_ms: now_ms,
            node_id: node_id.to_owned(),
            write,
        };
        let mut inner = self.lock();
        let kinds: Vec<DeferredWrite> = inner
            .entries
            .iter()
            .map(|entry| entry.write.kind())
            .collect();
        let dropped = make_room(&kinds, entry.write.kind(), self.max_entries);
        if dropped.is_empty() {
            append_line(&mut inner.file, &self.path, &entry)?;
            inner.entries.push_back(entry);
            return Ok(());
        }
        let mut kept: VecDeque<Entry> = inner
            .entries
            .iter()
            .enumerate()
            .filter(|(position, _)| dropped.binary_search(position).is_err())
            .map(|(_, entry)| entry.clone())
            .collect();
        kept.push_back(entry);
        self.rewrite(&mut inner, kept)?;
        if inner.dropped == 0 {
            tracing::warn!(path = %self.path.display(), max_entries = self.max_entries, "[journal] the write journal is full; dropping the oldest heartbeats and superseded reports");
        }
        inner.dropped += dropped.len() as u64;
        Ok(())
    }

    /// Replaces the file with `entries` atomically (temp file, fsync, rename, fsync of the dir)
    /// and reopens it for appending.
    fn rewrite(&self, inner: &mut Inner, entries: VecDeque<Entry>) -> Result<(), JournalError> {
        inner.file = replace_lines(&self.dir, JOURNAL_FILE, &entries)?;
        inner.entries = entries;
        Ok(())
    }

    /// Drops the writes too old to replay at `now_ms` ([`expired`]): the file is rewritten
    /// without them, one WARN names how many, and they count as dropped. Returns how many.
    pub fn drop_expired(&self, now_ms: i64) -> Result<usize, JournalError> {
        let mut inner = self.lock();
        let deferred_at: Vec<i64> = inner.entries.iter().map(|entry| entry.at_ms).collect();
        let too_old = expired(&deferred_at, now_ms);
        if too_old.is_empty() {
            return Ok(0);
        }
        let kept: VecDeque<Entry> = inner
            .entries
            .iter()
            .enumerate()
            .filter(|(position, _)| too_old.binary_search(position).is_err())
            .map(|(_, entry)| entry.clone())
            .collect();
        self.rewrite(&mut inner, kept)?;
        inner.dropped += too_old.len() as u64;
        tracing::warn!(
            count = too_old.len(),
            oldest_at = %hydra_api::rfc3339(deferred_at[too_old[0]]),
            path = %self.path.display(),
            "[journal] dropping journaled writes older than the control plane remembers write ids; replaying them could apply them twice"
        );
        Ok(too_old.len())
    }

    /// Sends every waiting write in order, each with its write id, and forgets those the server
    /// took. Stops at the first write the control plane could not take now (unreachable, no
    /// master, a server error), keeping it and everything after it; a write refused for good
    /// (a 4xx: the node was removed, the write no longer fits) is logged and not kept.
    pub async fn replay(&self, client: &Client) -> Result<Replayed, ClientError> {
        let _one_at_a_time = self.replaying.lock().await;
        if let Err(error) = self.drop_expired(hydra_api::now_ms()) {
            tracing::error!(%error, "[journal] cannot drop the journaled writes too old to replay");
        }
        let started = Instant::now();
        let mut replayed = Replayed {
            sent: 0,
            refused: 0,
            elapsed_ms: 0,
        };
        let mut outcome = Ok(());
        loop {
            let Some(entry) = self.lock().entries.front().cloned() else {
                break;
            };
            let write_id = hydra_api::write_id::parse_write_id(&entry.write_id).unwrap_or_default();
            let sent = match &entry.write {
                Write::Heartbeat(request) => {
                    client
                        .heartbeat_with_write_id(&entry.node_id, request, write_id)
                        .await
                }
                Write::WorkerReport(report) => {
                    client
                        .report_worker_with_write_id(&entry.node_id, report, write_id)
                        .await
                }
            };
            match sent {
                Ok(()) => replayed.sent += 1,
                Err(error)
                    if error.is_transient()
                        || matches!(error, ClientError::Indeterminate { .. }) =>
                {
                    outcome = Err(error);
                    break;
                }
                Err(error) => {
                    tracing::warn!(write_id = %entry.write_id, node_id = %entry.node_id, %error, "[journal] the control plane refused a journaled write; not kept");
                    replayed.refused += 1;
                }
            }
            let mut inner = self.lock();
            // Dropping to make room may have removed it meanwhile; forget it by id.
            if let Some(position) = inner
                .entries
                .iter()
                .position(|kept| kept.write_id == entry.write_id)
            {
                inner.entries.remove(position);
            }
        }
        // What is left goes back to disk at once; a crash before this replays the sent writes
        // again, which the server answers as repeats.
        {
            let mut inner = self.lock();
            let left = inner.entries.clone();
            if let Err(error) = self.rewrite(&mut inner, left) {
                tracing::error!(%error, "[journal] cannot rewrite the write journal after a replay");
            }
        }
        replayed.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if replayed.sent + replayed.refused > 0 {
            tracing::info!(
                sent = replayed.sent,
                refused = replayed.refused,
                elapsed_ms = replayed.elapsed_ms,
                left = self.len(),
                "[journal] replayed journaled writes to the master"
            );
        }
        outcome.map(|()| replayed)
    }
}

fn open_append(path: &Path) -> Result<File, JournalError> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(active_sessions: u32) -> Write {
        Write::Heartbeat(HeartbeatRequest {
            idle: active_sessions == 0,
            active_sessions,
            vram_mb: None,
        })
    }

    fn report(max_sessions: u32) -> Write {
        Write::WorkerReport(WorkerReport {
            agent_url: "http://127.0.0.1:7071".into(),
            agent_key: "k".repeat(32),
            max_sessions,
            sessions: Vec::new(),
            sequence: Some(u64::from(max_sessions)),
            start_timeout_ms: None,
        })
    }

    /// The journal as `hb<active>`/`rep<max>` words, from memory and from a reopened file.
    fn words(journal: &Journal, dir: &Path) -> (String, String) {
        let word = |entry: &Entry| match &entry.write {
            Write::Heartbeat(request) => format!("hb{}", request.active_sessions),
            Write::WorkerReport(report) => format!("rep{}", report.max_sessions),
        };
        let in_memory: Vec<String> = journal.entries().iter().map(word).collect();
        let (reopened, corrupt) = Journal::open(dir, 100, 0).unwrap();
        assert!(corrupt.is_none());
        let on_disk: Vec<String> = reopened.entries().iter().map(word).collect();
        (in_memory.join(" "), on_disk.join(" "))
    }

    #[test]
    fn writes_are_kept_in_order_on_disk_and_the_bound_drops_the_oldest_coalescible_first() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, corrupt) = Journal::open(dir.path(), 4, 1).unwrap();
        assert!(corrupt.is_none() && journal.is_empty());
        // (write appended, the journal after it, dropped so far)
        let steps = [
            (report(1), "rep1", 0),
            (heartbeat(1), "rep1 hb1", 0),
            (heartbeat(2), "rep1 hb1 hb2", 0),
            (heartbeat(3), "rep1 hb1 hb2 hb3", 0),
            // Full: the oldest heartbeat goes, the only report stays.
            (heartbeat(4), "rep1 hb2 hb3 hb4", 1),
            // A new report supersedes the first: it goes before any heartbeat.
            (report(2), "hb2 hb3 hb4 rep2", 2),
            (report(3), "hb3 hb4 rep2 rep3", 3),
        ];
        let mut ids = std::collections::HashSet::new();
        for (index, (write, expected, dropped)) in steps.into_iter().enumerate() {
            journal
                .append("w-1", write, 1_000 + index as i64, index as u128 * 7_919)
                .unwrap();
            let (in_memory, on_disk) = words(&journal, dir.path());
            assert_eq!(in_memory, expected, "step {index}");
            assert_eq!(on_disk, expected, "step {index}: the file says the same");
            assert_eq!(journal.dropped(), dropped, "step {index}");
        }
        for entry in journal.entries() {
            assert!(hydra_api::write_id::parse_write_id(&entry.write_id).is_ok());
            assert!(ids.insert(entry.write_id), "write ids are distinct");
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(journal.path()).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "a worker report holds the agent key");
    }

    #[test]
    fn writes_older_than_a_week_less_an_hour_are_dropped_not_replayed() {
        const HOUR: i64 = 3_600_000;
        let now = 1_000 * 24 * HOUR;
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), 10, 0).unwrap();
        // (write, hours before now it was deferred)
        for (index, (write, hours_ago)) in [
            (heartbeat(1), 8 * 24),
            (report(1), 7 * 24 - 1),
            (heartbeat(2), 7 * 24 - 2),
            (report(2), 1),
        ]
        .into_iter()
        .enumerate()
        {
            journal
                .append("w-1", write, now - hours_ago * HOUR, index as u128)
                .unwrap();
        }
        assert_eq!(journal.drop_expired(now).unwrap(), 2);
        let (in_memory, on_disk) = words(&journal, dir.path());
        assert_eq!(in_memory, "hb2 rep2");
        assert_eq!(on_disk, "hb2 rep2", "the file says the same");
        assert_eq!(journal.dropped(), 2);
        assert_eq!(journal.drop_expired(now).unwrap(), 0, "nothing more");
    }

    #[test]
    fn a_corrupt_journal_is_named_and_set_aside_never_used_or_deleted() {
        for (case, text) in [
            (
                "torn last line",
                "{\"write_id\":\"00000000-0000-4000-8000-000000000001\",\"at_ms\":1,\"node_id\":\"w\",\"kind\":\"heartbeat\",\"body\":{\"idle\":true}}\n{\"write_id\"",
            ),
            ("not an entry", "{\"write_id\":\"x\"}\n"),
            ("not JSON", "garbage\n"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(JOURNAL_FILE), text).unwrap();
            let (journal, corrupt) = Journal::open(dir.path(), 10, 42).unwrap();
            let message = corrupt.expect(case).to_string();
            assert!(
                message.contains(&dir.path().join(JOURNAL_FILE).display().to_string())
                    && message.contains("corrupt")
                    && message.contains("journal.jsonl.corrupt-42"),
                "{case}: {message}"
            );
            assert!(journal.is_empty(), "{case}: nothing of it is used");
            let aside =
                std::fs::read_to_string(dir.path().join("journal.jsonl.corrupt-42")).unwrap();
            assert_eq!(aside, text, "{case}: set aside as it was");
        }
    }
}

//! The agent's write journal's bound, as a decision: which deferred writes to drop to make room
//! for one more. The oldest coalescible write goes first: a heartbeat (a later one says the same,
//! fresher) or a worker report superseded by a later report (the journal's or the incoming one);
//! only when none is coalescible does the oldest write go. The caller counts what was dropped.
//!
//! And which writes are too old to replay at all ([`expired`]): the control plane forgets a
//! write id [`WRITE_ID_RETENTION_MS`] after applying it, so a write replayed later than that
//! could be applied a second time.

/// How long the control plane remembers an applied write id (`Idempotency-Key`); the server's
/// retention duty prunes older ones. One constant for both sides, so they cannot drift apart.
pub const WRITE_ID_RETENTION_MS: i64 = 7 * 24 * 3_600_000;

/// Taken off the retention before a journaled write counts as too old: the agent's and the
/// server's clocks may differ, and a replay takes time.
pub const REPLAY_MARGIN_MS: i64 = 3_600_000;

/// The positions (ascending) of the journaled writes, deferred at `deferred_at_ms` (oldest
/// first), that must not be replayed at `now_ms`. A write's id may have been applied as early as
/// when it was deferred (a replay whose answer was lost); once the server may have forgotten
/// that id (retention less the margin), replaying it could apply the write twice, so it is
/// dropped instead. A write stamped in the future (the clock went back) is kept.
pub fn expired(deferred_at_ms: &[i64], now_ms: i64) -> Vec<usize> {
    let limit_ms = WRITE_ID_RETENTION_MS - REPLAY_MARGIN_MS;
    deferred_at_ms
        .iter()
        .enumerate()
        .filter(|(_, at_ms)| now_ms.saturating_sub(**at_ms) >= limit_ms)
        .map(|(position, _)| position)
        .collect()
}

/// What a deferred write is, as far as dropping goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeferredWrite {
    /// A node heartbeat: any later heartbeat supersedes it.
    Heartbeat,
    /// A worker report: a later report of the same worker supersedes it.
    WorkerReport,
}

/// The positions (ascending) of the writes in `journal` (oldest first) to drop so that, with
/// `incoming` added, at most `bound` writes are kept (`bound` of 0 is taken as 1: the incoming
/// write is always kept).
pub fn make_room(journal: &[DeferredWrite], incoming: DeferredWrite, bound: usize) -> Vec<usize> {
    let keep_before_incoming = bound.max(1) - 1;
    let excess = journal.len().saturating_sub(keep_before_incoming);
    if excess == 0 {
        return Vec::new();
    }
    // A report is superseded when any report comes after it (in the journal or incoming).
    let mut report_after = incoming == DeferredWrite::WorkerReport;
    let mut coalescible = vec![false; journal.len()];
    for (position, write) in journal.iter().enumerate().rev() {
        coalescible[position] = match write {
            DeferredWrite::Heartbeat => true,
            DeferredWrite::WorkerReport => report_after,
        };
        report_after |= *write == DeferredWrite::WorkerReport;
    }
    let mut dropped: Vec<usize> = (0..journal.len())
        .filter(|position| coalescible[*position])
        .take(excess)
        .collect();
    let missing = excess - dropped.len();
    dropped.extend(
        (0..journal.len())
            .filter(|position| !coalescible[*position])
            .take(missing),
    );
    dropped.sort_unstable();
    dropped
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};
    use proptest::prelude::*;

    use super::*;

    fn write(word: &str) -> DeferredWrite {
        match word {
            "hb" => DeferredWrite::Heartbeat,
            "rep" => DeferredWrite::WorkerReport,
            other => panic!("unknown write {other}"),
        }
    }

    /// `journal` is `hb`/`rep` words oldest first; the answer lists the kept writes with their
    /// old positions, then what was dropped.
    fn check(journal: &str, incoming: &str, bound: usize, expected: Expect) {
        let writes: Vec<DeferredWrite> = journal.split_whitespace().map(write).collect();
        let dropped = make_room(&writes, write(incoming), bound);
        let kept: Vec<String> = journal
            .split_whitespace()
            .enumerate()
            .filter(|(position, _)| !dropped.contains(position))
            .map(|(position, word)| format!("{word}{position}"))
            .collect();
        expected.assert_eq(&format!(
            "keep [{}] + {incoming}; dropped {dropped:?}",
            kept.join(" ")
        ));
    }

    #[test]
    fn the_oldest_coalescible_writes_go_first() {
        check(
            "hb rep hb",
            "hb",
            4,
            expect!["keep [hb0 rep1 hb2] + hb; dropped []"],
        );
        check(
            "hb rep hb",
            "hb",
            3,
            expect!["keep [rep1 hb2] + hb; dropped [0]"],
        );
        // The only report is not superseded by a heartbeat: the heartbeats go first.
        check(
            "rep hb hb",
            "hb",
            2,
            expect!["keep [rep0] + hb; dropped [1, 2]"],
        );
        // An incoming report supersedes the journal's.
        check(
            "rep hb hb",
            "rep",
            3,
            expect!["keep [hb1 hb2] + rep; dropped [0]"],
        );
        check(
            "rep rep hb",
            "hb",
            3,
            expect!["keep [rep1 hb2] + hb; dropped [0]"],
        );
        // The latest report stays while anything else can go.
        check(
            "hb rep rep hb",
            "hb",
            2,
            expect!["keep [rep2] + hb; dropped [0, 1, 3]"],
        );
        // Nothing coalescible: the oldest goes.
        check("rep", "hb", 1, expect!["keep [] + hb; dropped [0]"]);
        check("", "hb", 1, expect!["keep [] + hb; dropped []"]);
        check("hb", "rep", 0, expect!["keep [] + rep; dropped [0]"]);
    }

    #[test]
    fn writes_older_than_the_servers_write_id_memory_are_not_replayed() {
        const HOUR: i64 = 3_600_000;
        const DAY: i64 = 24 * HOUR;
        let now = 100 * DAY;
        // (how long ago each write was deferred)
        let cases: &[(&str, &[i64])] = &[
            ("nothing journaled", &[]),
            ("a minute", &[60_000]),
            ("6 days 22 h: kept", &[6 * DAY + 22 * HOUR]),
            ("6 days 23 h less 1 ms: kept", &[6 * DAY + 23 * HOUR - 1]),
            ("6 days 23 h: the margin reached", &[6 * DAY + 23 * HOUR]),
            ("7 days", &[7 * DAY]),
            ("30 days, 8 days, 1 day", &[30 * DAY, 8 * DAY, DAY]),
            ("stamped an hour in the future", &[-HOUR]),
        ];
        let table: Vec<String> = cases
            .iter()
            .map(|(case, ages)| {
                let at: Vec<i64> = ages.iter().map(|age| now - age).collect();
                format!("{case}: expired {:?}", expired(&at, now))
            })
            .collect();
        expect![[r#"
            nothing journaled: expired []
            a minute: expired []
            6 days 22 h: kept: expired []
            6 days 23 h less 1 ms: kept: expired []
            6 days 23 h: the margin reached: expired [0]
            7 days: expired [0]
            30 days, 8 days, 1 day: expired [0, 1]
            stamped an hour in the future: expired []"#]]
        .assert_eq(&table.join("\n"));
    }

    fn writes() -> impl Strategy<Value = Vec<DeferredWrite>> {
        prop::collection::vec(
            prop_oneof![
                Just(DeferredWrite::Heartbeat),
                Just(DeferredWrite::WorkerReport)
            ],
            0..40,
        )
    }

    proptest! {
        /// A write is expired exactly when it is at least retention less margin old, whatever
        /// the order of the journal (an oracle written from the rule, not from `expired`).
        #[test]
        fn expired_writes_are_exactly_the_old_ones(
            ages in prop::collection::vec(-WRITE_ID_RETENTION_MS..3 * WRITE_ID_RETENTION_MS, 0..30),
            now in 0i64..1_000_000_000_000,
        ) {
            let at: Vec<i64> = ages.iter().map(|age| now - age).collect();
            let dropped = expired(&at, now);
            for (position, age) in ages.iter().enumerate() {
                let too_old = *age > 6 * 24 * 3_600_000 + 23 * 3_600_000 - 1;
                prop_assert_eq!(dropped.contains(&position), too_old, "age {}", age);
            }
            prop_assert!(dropped.windows(2).all(|pair| pair[0] < pair[1]));
        }

        /// Room is made exactly, and the last report (the one that says what the worker runs
        /// now) survives whenever the bound leaves room for it.
        #[test]
        fn room_is_made_exactly_and_the_latest_report_survives(
            journal in writes(),
            incoming_report in any::<bool>(),
            bound in 0usize..45,
        ) {
            let incoming = if incoming_report { DeferredWrite::WorkerReport } else { DeferredWrite::Heartbeat };
            let dropped = make_room(&journal, incoming, bound);
            let kept = journal.len() - dropped.len();
            prop_assert_eq!(kept, journal.len().min(bound.max(1) - 1));
            prop_assert!(dropped.windows(2).all(|pair| pair[0] < pair[1]));
            let latest_report = journal.iter().rposition(|write| *write == DeferredWrite::WorkerReport);
            if let Some(latest) = latest_report
                && !incoming_report
                && bound >= 2
            {
                prop_assert!(!dropped.contains(&latest), "latest report dropped: {:?}", dropped);
            }
        }
    }
}

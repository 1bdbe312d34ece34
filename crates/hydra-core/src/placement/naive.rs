//! The naive placement, written from the field's rule ("the least-loaded healthy worker",
//! `relay.md`) without any of `least_loaded_worker`'s helpers: filter, compute each load as a
//! float, sort, take the first. The oracle of the placement property test.

use crate::placement::WorkerLoad;

/// The worker a naive reading of the rule picks, or the field's error words.
pub fn naive_place(
    workers: &[WorkerLoad<'_>],
    now: i64,
    heartbeat_timeout_ms: i64,
) -> Result<String, &'static str> {
    let healthy: Vec<&WorkerLoad<'_>> = workers
        .iter()
        .filter(|worker| {
            !worker.drained
                && worker
                    .last_heartbeat
                    .is_some_and(|at| now - at < heartbeat_timeout_ms)
        })
        .collect();
    if healthy.is_empty() {
        return Err("no healthy workers available");
    }
    let mut with_room: Vec<(f64, u32, String)> = healthy
        .iter()
        .filter(|worker| worker.active_sessions < worker.max_sessions)
        .map(|worker| {
            (
                f64::from(worker.active_sessions) / f64::from(worker.max_sessions),
                worker.max_sessions - worker.active_sessions,
                worker.id.to_owned(),
            )
        })
        .collect();
    // Lowest load, then the most free slots, then the smallest id.
    with_room.sort_by(|a, b| {
        a.0.total_cmp(&b.0)
            .then(b.1.cmp(&a.1))
            .then_with(|| a.2.cmp(&b.2))
    });
    with_room
        .into_iter()
        .next()
        .map(|(_, _, id)| id)
        // The field's controller answers a full fleet as one without healthy workers.
        .ok_or("no healthy workers available")
}

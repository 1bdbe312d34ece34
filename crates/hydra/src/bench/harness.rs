//! The load harness: a route driven by a bounded number of workers for a bounded time, its
//! latencies in an hdrhistogram, and the bench's own CPU time.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use hydra_client::ClientError;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::time::Instant;

/// Requests one worker sends in a phase at most, whatever the duration.
pub(super) const MAX_REQUESTS_PER_WORKER: u64 = 5_000_000;
/// Latencies above this (in µs) are recorded as this.
pub(super) const HISTOGRAM_MAX_MICROS: u64 = 120_000_000;

/// One measured phase: latencies of successful requests, errors, and a tally of answer tags.
pub(super) struct Phase {
    pub(super) histogram: Histogram<u64>,
    pub(super) errors: u64,
    pub(super) seconds: f64,
    /// CPU seconds the bench process itself used during the phase (it shares the machine with
    /// the server on loopback), when `/proc/self/stat` says.
    pub(super) client_cpu_seconds: Option<f64>,
    pub(super) tags: BTreeMap<String, u64>,
    pub(super) first_error: Option<String>,
}

impl Phase {
    /// No requests yet; `client_cpu_seconds` starts at `cpu` (`Some(0.0)` for a sum of
    /// phases, `None` for one worker's share, which measures no CPU of its own).
    fn empty(cpu: Option<f64>) -> Phase {
        Phase {
            histogram: Histogram::new_with_bounds(1, HISTOGRAM_MAX_MICROS, 3)
                .expect("static histogram bounds"),
            errors: 0,
            seconds: 0.0,
            client_cpu_seconds: cpu,
            tags: BTreeMap::new(),
            first_error: None,
        }
    }

    /// Adds another phase's (or slice's) figures to this one.
    fn absorb(&mut self, other: Phase) -> anyhow::Result<()> {
        self.histogram.add(&other.histogram)?;
        self.errors += other.errors;
        self.seconds += other.seconds;
        self.client_cpu_seconds = self
            .client_cpu_seconds
            .zip(other.client_cpu_seconds)
            .map(|(mine, theirs)| mine + theirs);
        for (tag, count) in other.tags {
            *self.tags.entry(tag).or_default() += count;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }
}

/// Slices per route in an interleaved measurement.
pub(super) const SLICES: u32 = 10;

/// Measures two routes for `duration` each, in alternating slices (10 of each), so that both
/// see the same background load on a shared machine.
pub(super) async fn measure_interleaved<First, FirstFut, Second, SecondFut>(
    concurrency: u32,
    duration: Duration,
    seed: u64,
    first: First,
    second: Second,
) -> anyhow::Result<(Phase, Phase)>
where
    First: Fn(&mut StdRng) -> FirstFut + Send + Sync + 'static,
    FirstFut: Future<Output = Result<Option<String>, ClientError>> + Send,
    Second: Fn(&mut StdRng) -> SecondFut + Send + Sync + 'static,
    SecondFut: Future<Output = Result<Option<String>, ClientError>> + Send,
{
    let first = Arc::new(first);
    let second = Arc::new(second);
    let slice = duration / SLICES;
    let mut first_total = Phase::empty(Some(0.0));
    let mut second_total = Phase::empty(Some(0.0));
    for round in 0..SLICES {
        let round_seed = seed.wrapping_add(u64::from(round));
        first_total.absorb(measure(concurrency, slice, round_seed, first.clone()).await?)?;
        second_total.absorb(measure(concurrency, slice, round_seed, second.clone()).await?)?;
    }
    Ok((first_total, second_total))
}

/// Runs `request` from `concurrency` workers until `duration` has passed.
pub(super) async fn measure<Request, Fut>(
    concurrency: u32,
    duration: Duration,
    seed: u64,
    request: Arc<Request>,
) -> anyhow::Result<Phase>
where
    Request: Fn(&mut StdRng) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<String>, ClientError>> + Send,
{
    let cpu_before = own_cpu_seconds();
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let request = request.clone();
        workers.spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ u64::from(worker).wrapping_mul(0x9e37_79b9));
            let mut phase = Phase::empty(None);
            for _ in 0..MAX_REQUESTS_PER_WORKER {
                if Instant::now() >= deadline {
                    break;
                }
                let sent = Instant::now();
                let outcome = request(&mut rng).await;
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                match outcome {
                    Ok(tag) => {
                        phase
                            .histogram
                            .saturating_record(micros.clamp(1, HISTOGRAM_MAX_MICROS));
                        if let Some(tag) = tag {
                            *phase.tags.entry(tag).or_default() += 1;
                        }
                    }
                    Err(error) => {
                        phase.errors += 1;
                        phase.first_error.get_or_insert_with(|| error.to_string());
                    }
                }
            }
            phase
        });
    }
    let mut total = Phase::empty(None);
    while let Some(joined) = workers.join_next().await {
        let phase = joined.context("a bench worker panicked")?;
        total.histogram.add(&phase.histogram)?;
        total.errors += phase.errors;
        for (tag, count) in phase.tags {
            *total.tags.entry(tag).or_default() += count;
        }
        if total.first_error.is_none() {
            total.first_error = phase.first_error;
        }
    }
    total.seconds = started.elapsed().as_secs_f64();
    total.client_cpu_seconds = cpu_before
        .zip(own_cpu_seconds())
        .map(|(before, after)| after - before);
    Ok(total)
}

/// User + system CPU seconds of this process so far, from `/proc/self/stat` (Linux; its clock
/// ticks are `USER_HZ`, 100 per second).
pub(super) fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((user + system) as f64 / 100.0)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_cpu_time() {
        // Spin until the reading moves (bounded): a parser that read the wrong fields, or a
        // constant, never sees this process's CPU time grow.
        let before = own_cpu_seconds().expect("/proc/self/stat on Linux");
        let mut spin: u64 = 0;
        let mut after = before;
        for _ in 0..2_000 {
            for number in 0..1_000_000u64 {
                spin = spin.wrapping_add(std::hint::black_box(number * number));
            }
            after = own_cpu_seconds().expect("/proc/self/stat on Linux");
            if after > before {
                break;
            }
        }
        assert!(spin > 0);
        assert!(after > before, "CPU time did not grow: {before} -> {after}");
        // It counts this process only: far less than the machine's uptime in CPU seconds.
        let uptime: f64 = std::fs::read_to_string("/proc/uptime")
            .expect("/proc/uptime")
            .split_whitespace()
            .next()
            .and_then(|word| word.parse().ok())
            .expect("uptime in seconds");
        assert!(
            after < uptime,
            "{after} s of CPU in a process younger than {uptime} s"
        );
    }
}

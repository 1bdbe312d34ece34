//! Retry schedule: exponential backoff with full jitter.

/// Exponential backoff, `base_ms` doubling up to `max_ms`, with full jitter.
///
/// `attempt` counts from 0; `unit` is a random number in `[0, 1)` supplied by the caller so the
/// schedule stays deterministic under test. The result is in `[0, min(max, base * 2^attempt)]`.
pub fn full_jitter_delay_ms(attempt: u32, base_ms: u64, max_ms: u64, unit: f64) -> u64 {
    let ceiling = base_ms
        .saturating_mul(1u64.checked_shl(attempt.min(63)).unwrap_or(u64::MAX))
        .min(max_ms);
    let unit = unit.clamp(0.0, 1.0);
    (ceiling as f64 * unit).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_one_second_to_a_minute() {
        let ceilings: Vec<u64> = (0..9)
            .map(|attempt| full_jitter_delay_ms(attempt, 1_000, 60_000, 1.0))
            .collect();
        assert_eq!(
            ceilings,
            [
                1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000
            ]
        );
        assert_eq!(full_jitter_delay_ms(200, 1_000, 60_000, 1.0), 60_000);
        assert_eq!(full_jitter_delay_ms(3, 1_000, 60_000, 0.0), 0);
        assert_eq!(full_jitter_delay_ms(3, 1_000, 60_000, 0.5), 4_000);
    }
}

//! A token bucket: at most `capacity` events at once, refilled by one every `interval_ms`. Used
//! to bound what unauthenticated callers can make a node do (the viewers' ratings, each an
//! outbound POST). Time comes in as unix milliseconds.

/// A token bucket; starts full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    capacity: u32,
    interval_ms: i64,
    tokens: u32,
    refilled_at_ms: i64,
}

impl TokenBucket {
    /// A full bucket of `capacity` (at least 1) refilled by one every `interval_ms` (at least
    /// 1 ms), as of `now_ms`.
    pub fn new(capacity: u32, interval_ms: i64, now_ms: i64) -> TokenBucket {
        let capacity = capacity.max(1);
        TokenBucket {
            capacity,
            interval_ms: interval_ms.max(1),
            tokens: capacity,
            refilled_at_ms: now_ms,
        }
    }

    /// Takes one token if there is one at `now_ms`; `false` means the event must not happen.
    /// A clock that goes back refills nothing.
    pub fn try_take(&mut self, now_ms: i64) -> bool {
        self.refill(now_ms);
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }

    fn refill(&mut self, now_ms: i64) {
        let elapsed = now_ms.saturating_sub(self.refilled_at_ms);
        if elapsed < self.interval_ms {
            return;
        }
        let gained = elapsed / self.interval_ms;
        let room = i64::from(self.capacity - self.tokens);
        if gained >= room {
            // Full: time spent full earns nothing, so count from now.
            self.tokens = self.capacity;
            self.refilled_at_ms = now_ms;
        } else {
            self.tokens += u32::try_from(gained).unwrap_or(0);
            self.refilled_at_ms += gained * self.interval_ms;
        }
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;
    use proptest::prelude::*;

    use super::*;

    /// `capacity`/`interval` and the takes at the given times, as `time:+` (taken) or `time:-`.
    fn check(capacity: u32, interval_ms: i64, times: &[i64], expected: expect_test::Expect) {
        let mut bucket = TokenBucket::new(capacity, interval_ms, 0);
        let outcome: Vec<String> = times
            .iter()
            .map(|&at| format!("{at}:{}", if bucket.try_take(at) { "+" } else { "-" }))
            .collect();
        expected.assert_eq(&outcome.join(" "));
    }

    #[test]
    fn a_burst_then_one_per_interval() {
        check(
            3,
            1_000,
            &[0, 0, 0, 0, 999, 1_000, 1_000, 2_500, 3_000, 3_000],
            expect!["0:+ 0:+ 0:+ 0:- 999:- 1000:+ 1000:- 2500:+ 3000:+ 3000:-"],
        );
    }

    #[test]
    fn idle_time_refills_only_up_to_the_capacity() {
        check(
            2,
            100,
            &[0, 0, 10_000, 10_000, 10_000, 10_050, 10_100],
            expect!["0:+ 0:+ 10000:+ 10000:+ 10000:- 10050:- 10100:+"],
        );
    }

    #[test]
    fn a_clock_that_goes_back_refills_nothing() {
        check(
            1,
            100,
            &[500, 0, 550, 600],
            expect!["500:+ 0:- 550:- 600:+"],
        );
    }

    proptest! {
        /// Over any window, takes never exceed the capacity plus one per interval begun in it
        /// (the refill's phase is set before the window).
        #[test]
        fn takes_in_a_window_are_bounded(
            capacity in 1u32..10,
            interval_ms in 1i64..1_000,
            steps in proptest::collection::vec(0i64..500, 1..200),
        ) {
            let mut bucket = TokenBucket::new(capacity, interval_ms, 0);
            let mut now = 0;
            let mut taken_at = Vec::new();
            for step in steps {
                now += step;
                if bucket.try_take(now) {
                    taken_at.push(now);
                }
            }
            for (first, &start) in taken_at.iter().enumerate() {
                for (last, &end) in taken_at.iter().enumerate().skip(first) {
                    let count = i64::try_from(last - first + 1).unwrap();
                    let allowed = i64::from(capacity) + (end - start) / interval_ms + 1;
                    prop_assert!(count <= allowed, "{count} takes in [{start}, {end}]");
                }
            }
        }
    }
}

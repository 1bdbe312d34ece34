//! Each session's WebRTC UDP port range: the field's `40000 + 20 per slot`, where a slot is the
//! session's place in the worker's session port range (`port - port_range_start`). The session
//! process gets it as `{webrtc_port_start}`/`{webrtc_port_end}`; the agent's microphone peer
//! binds inside it too, so every UDP port a session uses is known from its slot alone.

/// The field's first WebRTC port (`sessions.webrtc_port_start`).
pub const DEFAULT_START: u16 = 40_000;
/// The field's ports per session (`sessions.webrtc_ports_per_session`).
pub const DEFAULT_WIDTH: u16 = 20;

/// The first and last port (both inclusive) of slot `slot`'s range, or `None` when the range
/// would pass 65535 or `width` is 0. Distinct slots get disjoint ranges.
pub fn session_range(start: u16, width: u16, slot: u16) -> Option<(u16, u16)> {
    if width == 0 {
        return None;
    }
    let first = u32::from(start) + u32::from(width) * u32::from(slot);
    let last = first + u32::from(width) - 1;
    Some((u16::try_from(first).ok()?, u16::try_from(last).ok()?))
}

/// Whether every one of `slots` slots gets a range (the config check: `sessions.max` slots).
pub fn fits(start: u16, width: u16, slots: u32) -> bool {
    match slots.checked_sub(1) {
        None => width > 0,
        Some(last_slot) => {
            u16::try_from(last_slot).is_ok_and(|slot| session_range(start, width, slot).is_some())
        }
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;
    use proptest::prelude::*;

    use super::*;

    fn check(cases: &[(u16, u16, u16)], expected: expect_test::Expect) {
        let lines: Vec<String> = cases
            .iter()
            .map(|&(start, width, slot)| {
                let range = session_range(start, width, slot)
                    .map_or("none".to_owned(), |(first, last)| format!("{first}-{last}"));
                format!("{start}+{width}*{slot}: {range}")
            })
            .collect();
        expected.assert_eq(&lines.join("\n"));
    }

    #[test]
    fn the_field_s_ranges_are_twenty_ports_per_slot_from_40000() {
        check(
            &[
                (DEFAULT_START, DEFAULT_WIDTH, 0),
                (DEFAULT_START, DEFAULT_WIDTH, 1),
                (DEFAULT_START, DEFAULT_WIDTH, 14),
                (DEFAULT_START, DEFAULT_WIDTH, 1_275),
                (DEFAULT_START, DEFAULT_WIDTH, 1_276),
                (65_535, 1, 0),
                (65_535, 2, 0),
                (40_000, 0, 0),
            ],
            expect![[r#"
                40000+20*0: 40000-40019
                40000+20*1: 40020-40039
                40000+20*14: 40280-40299
                40000+20*1275: 65500-65519
                40000+20*1276: none
                65535+1*0: 65535-65535
                65535+2*0: none
                40000+0*0: none"#]],
        );
    }

    #[test]
    fn fits_says_whether_the_last_slot_still_has_its_range() {
        assert!(fits(DEFAULT_START, DEFAULT_WIDTH, 15));
        assert!(fits(DEFAULT_START, DEFAULT_WIDTH, 1_276));
        assert!(!fits(DEFAULT_START, DEFAULT_WIDTH, 1_277));
        assert!(!fits(DEFAULT_START, 0, 1));
        assert!(fits(65_535, 1, 1));
        assert!(!fits(65_535, 1, 2));
    }

    proptest! {
        #[test]
        fn distinct_slots_never_share_a_port(
            start in 1_024u16..=65_535,
            width in 1u16..=64,
            a in 0u16..2_000,
            b in 0u16..2_000,
        ) {
            if let (Some((a_first, a_last)), Some((b_first, b_last))) =
                (session_range(start, width, a), session_range(start, width, b))
            {
                prop_assert_eq!(a_last - a_first + 1, width);
                prop_assert!(a_first >= start);
                if a != b {
                    // Written from the definition of disjoint intervals, not from the formula.
                    prop_assert!(a_last < b_first || b_last < a_first);
                }
            }
        }
    }
}

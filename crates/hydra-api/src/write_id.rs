//! Write ids on the wire: the `Idempotency-Key` header a sender puts on a write it may repeat (an
//! agent's journal replaying what it wrote while no master answered). The value is a UUID; the
//! server applies a write with a given id at most once and answers a repeat with the status the
//! first application answered.

/// The header's name.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The header a server adds to the answer of a repeat it did not apply again.
pub const IDEMPOTENCY_REPLAYED: &str = "idempotency-replayed";

/// Reads a write id: a UUID in its hyphenated form (`8-4-4-4-12` hex digits, either case).
/// The error says what is wrong (the caller names the header).
pub fn parse_write_id(text: &str) -> Result<u128, String> {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|group| group.len()).collect();
    if lengths != [8, 4, 4, 4, 12] {
        return Err(format!(
            "must be a UUID (8-4-4-4-12 hex digits), got {} characters",
            text.chars().count()
        ));
    }
    let digits: String = groups.concat();
    if !digits.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err("must be a UUID: only hex digits and hyphens".to_owned());
    }
    u128::from_str_radix(&digits, 16).map_err(|error| format!("must be a UUID: {error}"))
}

/// Writes a write id as a lowercase hyphenated UUID.
pub fn format_write_id(id: u128) -> String {
    let hex = format!("{id:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A random (version 4) UUID from 128 random bits the caller drew.
pub fn random_write_id(random: u128) -> u128 {
    (random & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_ids_round_trip_as_uuids_and_anything_else_is_refused() {
        let id = random_write_id(u128::MAX);
        let text = format_write_id(id);
        assert_eq!(text, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(parse_write_id(&text), Ok(id));
        assert_eq!(parse_write_id(&text.to_uppercase()), Ok(id));
        assert_eq!(
            format_write_id(random_write_id(0)),
            "00000000-0000-4000-8000-000000000000"
        );
        for bad in [
            "",
            "not-a-uuid",
            "ffffffffffff4fffbfffffffffffffff",
            "gfffffff-ffff-4fff-bfff-ffffffffffff",
            "+fffffff-ffff-4fff-bfff-ffffffffffff",
            "ffffffff-ffff-4fff-bfff-ffffffffffff-",
        ] {
            assert!(parse_write_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}

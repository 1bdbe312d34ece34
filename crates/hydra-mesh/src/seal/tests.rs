//! Seal and open: wrong key, old key through a rotation, truncated, altered, stale and replayed
//! datagrams, and the key file's permissions.

use super::*;

const NOW: i64 = 1_700_000_000_000;
const OLD: [u8; KEY_LEN] = [1; KEY_LEN];
const NEW: [u8; KEY_LEN] = [2; KEY_LEN];

fn sealer(keys: &[[u8; KEY_LEN]]) -> Sealer {
    Sealer::new(Keyring::new(keys).expect("keyring"))
}

#[test]
fn a_sealed_datagram_opens_under_the_same_key_and_hides_its_payload() {
    let mut alice = sealer(&[OLD]);
    let mut bob = sealer(&[OLD]);
    let datagram = alice.seal(b"ping from alice", NOW);
    assert_eq!(datagram.len(), OVERHEAD + b"ping from alice".len());
    assert!(
        !datagram
            .windows(b"alice".len())
            .any(|window| window == b"alice"),
        "the payload travels encrypted"
    );
    assert_eq!(bob.open(&datagram, NOW + 5).unwrap(), b"ping from alice");
}

#[test]
fn a_wrong_key_is_refused() {
    let mut alice = sealer(&[OLD]);
    let mut stranger = sealer(&[NEW]);
    let datagram = alice.seal(b"payload", NOW);
    assert_eq!(stranger.open(&datagram, NOW), Err(OpenError::UnknownKey));
    // A forged key id (the right id, another key's seal) fails the tag.
    let mut forged = stranger.seal(b"payload", NOW);
    forged[1..5].copy_from_slice(&datagram[1..5]);
    assert_eq!(alice.open(&forged, NOW), Err(OpenError::BadSeal));
}

#[test]
fn rotation_accepts_the_new_key_then_uses_it_then_drops_the_old() {
    let mut on_old = sealer(&[OLD]);
    // Step 1: the new key is installed second: accepted, not used.
    let mut accepting = sealer(&[OLD, NEW]);
    let mut on_new = sealer(&[NEW, OLD]);
    assert_eq!(
        accepting.open(&on_new.seal(b"a", NOW), NOW),
        Ok(b"a".to_vec())
    );
    assert_eq!(
        on_old.open(&accepting.seal(b"b", NOW), NOW),
        Ok(b"b".to_vec())
    );
    // Step 2: a node already on the new key still opens the old key (an old key datagram).
    assert_eq!(on_new.open(&on_old.seal(b"c", NOW), NOW), Ok(b"c".to_vec()));
    // Step 3: once the old key is dropped, its datagrams are refused.
    on_new.set_keyring(Keyring::new(&[NEW]).unwrap());
    assert_eq!(
        on_new.open(&on_old.seal(b"d", NOW), NOW),
        Err(OpenError::UnknownKey)
    );
    assert_eq!(
        on_new.keyring().key_ids(),
        Keyring::new(&[NEW]).unwrap().key_ids()
    );
}

#[test]
fn every_truncation_and_every_altered_byte_is_refused() {
    let mut alice = sealer(&[OLD]);
    let datagram = alice.seal(b"a payload long enough to cut", NOW);
    for length in 0..datagram.len() {
        let mut bob = sealer(&[OLD]);
        let result = bob.open(&datagram[..length], NOW);
        assert!(
            matches!(result, Err(OpenError::Truncated | OpenError::BadSeal)),
            "cut at {length}: {result:?}"
        );
    }
    for index in 0..datagram.len() {
        let mut bob = sealer(&[OLD]);
        let mut altered = datagram.clone();
        altered[index] ^= 0x40;
        let result = bob.open(&altered, NOW);
        assert!(result.is_err(), "byte {index} altered was accepted");
    }
}

#[test]
fn a_replayed_datagram_is_refused_and_reordering_within_the_window_is_not() {
    let mut alice = sealer(&[OLD]);
    let mut bob = sealer(&[OLD]);
    let first = alice.seal(b"1", NOW);
    let second = alice.seal(b"2", NOW);
    let third = alice.seal(b"3", NOW);
    assert!(bob.open(&third, NOW).is_ok());
    assert!(bob.open(&first, NOW).is_ok(), "late but new");
    assert_eq!(bob.open(&first, NOW), Err(OpenError::Replayed));
    assert_eq!(bob.open(&third, NOW), Err(OpenError::Replayed));
    assert!(bob.open(&second, NOW).is_ok());
    // Far behind the window: refused even if never seen.
    let old = alice.seal(b"old", NOW);
    for _ in 0..WINDOW + 1 {
        let newer = alice.seal(b"n", NOW);
        assert!(bob.open(&newer, NOW).is_ok());
    }
    assert_eq!(bob.open(&old, NOW), Err(OpenError::Replayed));
}

#[test]
fn a_forged_datagram_does_not_move_the_replay_window() {
    let mut alice = sealer(&[OLD]);
    let mut bob = sealer(&[OLD]);
    let genuine = alice.seal(b"genuine", NOW);
    let mut forged = genuine.clone();
    // The same sender with a far higher counter, tag not recomputed.
    forged[13..21].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(bob.open(&forged, NOW), Err(OpenError::BadSeal));
    assert!(bob.open(&genuine, NOW).is_ok());
}

#[test]
fn stale_datagrams_are_refused_and_a_restarted_sender_is_not_a_replay() {
    let mut alice = sealer(&[OLD]);
    let mut bob = sealer(&[OLD]);
    let captured = alice.seal(b"captured", NOW);
    assert_eq!(
        bob.open(&captured, NOW + MAX_AGE_MS + 1),
        Err(OpenError::Stale)
    );
    assert_eq!(
        bob.open(&alice.seal(b"future", NOW + MAX_AGE_MS + 1), NOW),
        Err(OpenError::Stale)
    );
    assert!(bob.open(&alice.seal(b"now", NOW), NOW).is_ok());
    // Alice restarts: her counter starts again, under a new sender id.
    let mut alice_again = sealer(&[OLD]);
    assert!(
        bob.open(&alice_again.seal(b"hello again", NOW), NOW)
            .is_ok()
    );
}

#[test]
fn the_key_file_is_parsed_checked_for_0600_and_never_shown() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.key");
    let text = format!(
        "# primary first\n{}\n\n{}\n",
        hex::encode(NEW),
        hex::encode(OLD)
    );
    std::fs::write(&path, &text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = Keyring::load(&path).unwrap_err();
    expect_test::expect![[
        r#"cluster key file <dir>/cluster.key must not be readable by group or others (chmod 600)"#
    ]]
    .assert_eq(
        &error
            .to_string()
            .replace(&dir.path().display().to_string(), "<dir>"),
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let keyring = Keyring::load(&path).unwrap();
    assert_eq!(
        keyring.key_ids(),
        Keyring::new(&[NEW, OLD]).unwrap().key_ids()
    );
    let keyring_shown = format!("{keyring:?}");
    let shown = format!("{keyring_shown} {:?}", Sealer::new(keyring));
    assert!(!shown.contains(&hex::encode(NEW)) && !shown.contains(&hex::encode(OLD)));
    assert_eq!(
        Keyring::parse("abc").unwrap_err(),
        KeyringError::Malformed { line: 1 }
    );
    assert_eq!(Keyring::parse("# none\n").unwrap_err(), KeyringError::Empty);
}

#[test]
fn a_keyring_handed_out_as_hex_opens_what_the_original_sealed_and_refuses_bad_lists() {
    let original = Keyring::new(&[NEW, OLD]).unwrap();
    let listed = original.to_hex();
    assert_eq!(listed, [hex::encode(NEW), hex::encode(OLD)]);
    let copy = Keyring::from_hex(&listed).unwrap();
    assert_eq!(copy.key_ids(), original.key_ids());
    let mut sender = Sealer::new(original.clone());
    let mut receiver = Sealer::new(copy);
    let datagram = sender.seal(b"hello", NOW);
    assert_eq!(receiver.open(&datagram, NOW).unwrap(), b"hello");
    assert_eq!(
        Keyring::from_hex(&[hex::encode(NEW), "zz".into()]).unwrap_err(),
        KeyringError::Malformed { line: 2 }
    );
    assert_eq!(
        Keyring::from_hex(&[format!("{}\n{}", hex::encode(NEW), hex::encode(OLD))]).unwrap_err(),
        KeyringError::Malformed { line: 1 },
        "one entry is one key, never several lines"
    );
    assert_eq!(Keyring::from_hex(&[]).unwrap_err(), KeyringError::Empty);
}

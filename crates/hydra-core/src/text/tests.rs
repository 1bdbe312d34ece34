//! Table and property tests of the text rule.

use expect_test::{Expect, expect};
use proptest::prelude::*;

use super::*;

fn check(inputs: &[&str], expected: Expect) {
    let mut out = String::new();
    for input in inputs {
        let describe = |kind| match first_refused(input, kind) {
            Some(character) => format!("U+{:04X}", u32::from(character)),
            None => "ok".to_owned(),
        };
        out.push_str(&format!(
            "{input:?}: word {} free {} clean {:?}\n",
            describe(TextKind::Word),
            describe(TextKind::FreeText),
            clean_free_text(input)
        ));
    }
    expected.assert_eq(&out);
}

#[test]
fn control_characters_are_refused_and_free_text_keeps_newlines_and_tabs() {
    check(
        &[
            "plain",
            "http://x\u{0}",
            "line one\nline two",
            "col\tcol",
            "crlf\r\nnext",
            "bell\u{7}",
            "del\u{7f}",
            "c1\u{85}next",
            "héllo wörld ✓",
            "",
        ],
        expect![[r#"
            "plain": word ok free ok clean "plain"
            "http://x\0": word U+0000 free U+0000 clean "http://x�"
            "line one\nline two": word U+000A free ok clean "line one\nline two"
            "col\tcol": word U+0009 free ok clean "col\tcol"
            "crlf\r\nnext": word U+000D free U+000D clean "crlf\nnext"
            "bell\u{7}": word U+0007 free U+0007 clean "bell�"
            "del\u{7f}": word U+007F free U+007F clean "del�"
            "c1\u{85}next": word U+0085 free U+0085 clean "c1�next"
            "héllo wörld ✓": word ok free ok clean "héllo wörld ✓"
            "": word ok free ok clean ""
        "#]],
    );
}

proptest! {
    #[test]
    fn cleaned_text_is_always_accepted_as_free_text(text in any::<String>()) {
        let cleaned = clean_free_text(&text);
        prop_assert_eq!(first_refused(&cleaned, TextKind::FreeText), None);
        let again = clean_free_text(&cleaned).into_owned();
        prop_assert_eq!(again.as_str(), cleaned.as_ref());
    }

    #[test]
    fn accepted_text_is_left_as_it_is(text in "[^\\p{Cc}]*") {
        prop_assert_eq!(first_refused(&text, TextKind::Word), None);
        let cleaned = clean_free_text(&text).into_owned();
        prop_assert_eq!(cleaned.as_str(), text.as_str());
    }

    #[test]
    fn a_word_accepted_is_accepted_as_free_text(text in any::<String>()) {
        if first_refused(&text, TextKind::Word).is_none() {
            prop_assert_eq!(first_refused(&text, TextKind::FreeText), None);
        }
    }
}

#[test]
fn a_fleet_word_is_1_to_64_of_letters_digits_dot_underscore_and_dash() {
    let long = "a".repeat(65);
    let refused = |found: &str| {
        Err(format!(
            "district may hold only letters, digits, '.', '_' and '-' (found {found})"
        ))
    };
    let cases = [
        ("bxl1", Ok(())),
        ("w-01.a_b", Ok(())),
        ("", Err("district must not be empty".to_owned())),
        (
            long.as_str(),
            Err("district is longer than 64 characters".to_owned()),
        ),
        ("bx l", refused("' '")),
        ("\u{e9}", refused("'\u{e9}'")),
    ];
    for (value, expected) in cases {
        assert_eq!(super::check_word("district", value), expected, "{value:?}");
    }
    assert_eq!(super::check_word("district", &"a".repeat(64)), Ok(()));
}

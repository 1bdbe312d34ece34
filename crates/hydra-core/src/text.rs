//! Which characters a text field may hold, and how a sender cleans text it did not write.
//!
//! The rule (one for every text field of the API): no Unicode control character (`char::is_control`:
//! U+0000..U+001F and U+007F..U+009F) anywhere. Free-text fields (a rating comment, a worker's
//! `error`, which is often a process log tail) may also hold `\n` and `\t`; everything else
//! (ids, names, URLs, words) may not. NUL is refused everywhere: PostgreSQL cannot store it, and
//! control characters in ids and names end up in log lines and headers.

use std::borrow::Cow;

/// What a text field holds, which decides the characters it may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// Ids, names, addresses, words: no control character at all.
    Word,
    /// Human or log text: `\n` and `\t` allowed, no other control character.
    FreeText,
}

/// Whether `character` is refused in a field of `kind`.
pub fn is_refused(character: char, kind: TextKind) -> bool {
    character.is_control() && !(kind == TextKind::FreeText && matches!(character, '\n' | '\t'))
}

/// The first refused character of `text` in a field of `kind`, if any.
pub fn first_refused(text: &str, kind: TextKind) -> Option<char> {
    text.chars().find(|&character| is_refused(character, kind))
}

/// `text` made acceptable as free text: `\r\n` becomes `\n`, any other refused character becomes
/// U+FFFD. Text that is acceptable already is returned as it is (borrowed).
pub fn clean_free_text(text: &str) -> Cow<'_, str> {
    if first_refused(text, TextKind::FreeText).is_none() {
        return Cow::Borrowed(text);
    }
    let mut cleaned = String::with_capacity(text.len());
    let mut characters = text.chars().peekable();
    while let Some(character) = characters.next() {
        if character == '\r' && characters.peek() == Some(&'\n') {
            continue;
        }
        if is_refused(character, TextKind::FreeText) {
            cleaned.push(char::REPLACEMENT_CHARACTER);
        } else {
            cleaned.push(character);
        }
    }
    Cow::Owned(cleaned)
}

/// Longest fleet word (id, district, venue, owner, org).
pub const MAX_WORD_LEN: usize = 64;

/// Checks a fleet word (id, district, venue, owner, org): 1 to [`MAX_WORD_LEN`] of
/// `[A-Za-z0-9._-]`; the message names `field`.
pub fn check_word(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if value.len() > MAX_WORD_LEN {
        return Err(format!("{field} is longer than {MAX_WORD_LEN} characters"));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{field} may hold only letters, digits, '.', '_' and '-' (found {bad:?})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

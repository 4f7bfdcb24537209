//! Names that reach the terminal: layer names from model files, class names from
//! folder names and checkpoints. A control character (ESC starts a terminal escape
//! sequence that can clear the screen or rewrite what was printed, a newline forges
//! a line) or a bidirectional override (which reorders what is shown) is refused.

/// The first character of `s` that must not be printed as part of a name, if any.
pub fn unprintable(s: &str) -> Option<char> {
    s.chars().find(|&c| {
        c.is_control()
            || matches!(c,
                '\u{200B}'..='\u{200F}' // zero-width spaces and marks
                | '\u{202A}'..='\u{202E}' // bidirectional embeddings and overrides
                | '\u{2066}'..='\u{2069}' // bidirectional isolates
                | '\u{FEFF}')
    })
}

/// `Err` naming the character when `s` has one [`unprintable`] refuses; `what` names
/// the thing (`layer name "a\u{1b}[2J"`).
pub fn check_printable(s: &str, what: &str) -> Result<(), String> {
    match unprintable(s) {
        None => Ok(()),
        Some(c) => Err(format!(
            "{what} {s:?} contains the character U+{:04X}: names may not hold control or \
             bidirectional characters",
            c as u32
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidirectional_characters_are_found() {
        assert_eq!(unprintable("features.0"), None);
        assert_eq!(unprintable("猫 cat"), None);
        assert_eq!(unprintable("a\u{1b}[31m"), Some('\u{1b}'));
        assert_eq!(unprintable("a\nb"), Some('\n'));
        assert_eq!(unprintable("abc\u{202E}"), Some('\u{202E}'));
        let e = check_printable("x\u{7}", "class name").unwrap_err();
        assert_eq!(
            e,
            "class name \"x\\u{7}\" contains the character U+0007: names may not hold \
             control or bidirectional characters"
        );
    }
}

use std::fmt;

/// Outside input that cannot be used: names the field and says what is wrong with it.
///
/// `field` is a path into the input (`value`, `data`, `batch[2].to`, `owners[1]`); `problem`
/// is a sentence fragment a person can act on. Input errors never carry secret material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub field: String,
    pub problem: String,
}

impl InputError {
    /// Control and bidirectional-override characters (which may come from the input itself,
    /// for example a field name) are escaped, so an error is always one honest line.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { field: printable(&field.into()), problem: printable(&problem.into()) }
    }
}

/// Bidirectional marks and overrides, zero-width and other invisible format characters, and
/// line or paragraph separators: characters that change how text reads without being seen.
/// Also the blank fillers, variation selectors and tag characters, which draw nothing (or
/// change a neighbour's look) and can carry hidden text. Code points from Unicode's
/// `Default_Ignorable_Code_Point` list and the Hangul fillers.
pub fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{034f}' | '\u{061c}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}'
        | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}'
        | '\u{ffa0}' | '\u{fff0}'..='\u{fffb}' | '\u{1bca0}'..='\u{1bca3}'
        | '\u{1d173}'..='\u{1d17a}' | '\u{e0000}'..='\u{e0fff}')
}

/// `text` with control characters and bidirectional overrides written as `\u{…}` escapes.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || is_invisible(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for InputError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_characters_that_draw_nothing_are_invisible() {
        for c in [
            '\u{202e}',
            '\u{200b}',
            '\u{034f}',
            '\u{3164}',
            '\u{ffa0}',
            '\u{fe0f}',
            '\u{e0041}',
            '\u{e0100}',
            '\u{180b}',
            '\u{2064}',
            '\u{1d173}',
        ] {
            assert!(is_invisible(c), "{:?}", c.escape_unicode().to_string());
            assert_eq!(printable(&format!("a{c}b")), format!("a{}b", c.escape_unicode()));
        }
        for c in ['a', 'é', 'Ж', '中', '$', ' ', '\u{2019}'] {
            assert!(!is_invisible(c), "{c}");
        }
    }
}

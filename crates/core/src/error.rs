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
pub fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{061c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{2069}' | '\u{feff}')
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

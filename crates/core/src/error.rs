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
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { field: field.into(), problem: problem.into() }
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for InputError {}

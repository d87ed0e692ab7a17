//! Validation errors: each names where (a JSON pointer into the file) and what
//! is wrong and expected.

use std::fmt;

/// One thing wrong with a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// JSON pointer (RFC 6901) to the offending value; `""` is the whole file.
    pub pointer: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.pointer.is_empty() {
            "/"
        } else {
            &self.pointer
        };
        write!(f, "{at}: {}", self.message)
    }
}

/// Every error found in a policy file (never empty), in document order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl PolicyErrors {
    /// The errors.
    pub fn iter(&self) -> impl Iterator<Item = &PolicyError> {
        self.0.iter()
    }
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} error{} in policy", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Collects errors while a file is read.
#[derive(Debug, Default)]
pub(crate) struct Errors(Vec<PolicyError>);

impl Errors {
    pub(crate) fn push(&mut self, pointer: &str, message: impl Into<String>) {
        self.0.push(PolicyError {
            pointer: pointer.to_owned(),
            message: message.into(),
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn into_result<T>(mut self, value: T) -> Result<T, PolicyErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            self.0.sort_by(|a, b| a.pointer.cmp(&b.pointer));
            self.0.dedup();
            Err(PolicyErrors(self.0))
        }
    }
}

/// Appends one reference token to a JSON pointer, escaping `~` and `/`.
pub fn child(pointer: &str, token: &str) -> String {
    let mut out = String::with_capacity(pointer.len() + token.len() + 1);
    out.push_str(pointer);
    out.push('/');
    for c in token.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_tokens_are_escaped() {
        assert_eq!(child("", "tools"), "/tools");
        assert_eq!(child("/tools", "a/b~c"), "/tools/a~1b~0c");
    }
}

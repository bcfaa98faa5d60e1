//! The validation error shared across the API, the domain types and the store:
//! a rejected input value that names the field to fix.

use std::borrow::Cow;
use std::fmt;

/// A rejected input value. `field` is the request parameter the client must fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: Cow<'static, str>,
    pub code: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn missing(field: impl Into<Cow<'static, str>>) -> Self {
        let field = field.into();
        Self { code: "missing_parameter", message: format!("{field} is required"), field }
    }

    pub fn invalid(field: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        let field = field.into();
        Self { code: "invalid_parameter", message: format!("{field} {}", message.into()), field }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FieldError {}

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

    /// What is wrong with the value, without the field's name (`must be …`), for
    /// a caller that names the field itself.
    pub fn reason(&self) -> &str {
        self.message.strip_prefix(self.field.as_ref()).map_or(&self.message, str::trim_start)
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FieldError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_leaves_the_field_out() {
        assert_eq!(FieldError::invalid("limit", "must be an integer").reason(), "must be an integer");
        assert_eq!(FieldError::missing("runner_id").reason(), "is required");
    }
}

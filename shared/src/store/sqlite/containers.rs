//! SQLite adapter of the `containers` port.

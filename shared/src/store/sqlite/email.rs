//! SQLite adapter of the `email` port.

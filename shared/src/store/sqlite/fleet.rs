//! SQLite adapter of the `fleet` port.

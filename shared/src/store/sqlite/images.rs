//! SQLite adapter of the `images` port.

//! SQLite adapter of the `users` port.

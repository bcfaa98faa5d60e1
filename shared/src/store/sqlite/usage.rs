//! SQLite adapter of the `UsageStore` port (S3 output usage).

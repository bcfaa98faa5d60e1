//! Crash points for recovery tests. `GEONEX_FAILPOINTS=name[,name…]` makes the
//! process exit abruptly (as a kill would) when it reaches a named point. Unset in
//! production, where each check is one load of a cached empty list.

use std::sync::LazyLock;

static ACTIVE: LazyLock<Vec<String>> = LazyLock::new(|| {
    std::env::var("GEONEX_FAILPOINTS")
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
});

/// Exits the process without cleanup if `name` is an active failpoint.
pub fn hit(name: &str) {
    if ACTIVE.iter().any(|n| n == name) {
        eprintln!("failpoint {name} reached: exiting");
        std::process::exit(86);
    }
}

//! Failure points for recovery tests. `GEONEX_FAILPOINTS` lists `name` (exit the
//! process abruptly at that point, as a kill would) or `name=sleep(MS)` (pause
//! there), comma-separated. Unset in production, where each check is a lookup
//! in an empty list.

use std::sync::LazyLock;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Exit,
    Sleep(Duration),
}

fn parse(spec: &str) -> Vec<(String, Action)> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter_map(|item| match item.split_once('=') {
            None => Some((item.to_owned(), Action::Exit)),
            Some((name, action)) => {
                let ms = action.strip_prefix("sleep(")?.strip_suffix(')')?.parse().ok()?;
                Some((name.to_owned(), Action::Sleep(Duration::from_millis(ms))))
            }
        })
        .collect()
}

static ACTIVE: LazyLock<Vec<(String, Action)>> =
    LazyLock::new(|| std::env::var("GEONEX_FAILPOINTS").map(|v| parse(&v)).unwrap_or_default());

/// Acts on `name` if it is an active failure point.
pub async fn hit(name: &str) {
    for (n, action) in ACTIVE.iter() {
        if n == name {
            match action {
                Action::Exit => {
                    eprintln!("failpoint {name} reached: exiting");
                    std::process::exit(86);
                }
                Action::Sleep(d) => tokio::time::sleep(*d).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_into_exit_and_sleep_actions() {
        assert_eq!(
            parse("a, b=sleep(250),bad=explode"),
            vec![("a".into(), Action::Exit), ("b".into(), Action::Sleep(Duration::from_millis(250)))]
        );
    }
}

//! Logging: JSON lines (or human-readable with `GEONEX_LOG__FORMAT=pretty`) on
//! stderr, filtered by `RUST_LOG` or `GEONEX_LOG__FILTER`.

use geonex_shared::config::LogSettings;
use tracing_subscriber::EnvFilter;

pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = if settings.format == "pretty" {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init()
    };
    // A second init (tests build several applications) keeps the first subscriber.
    drop(result);
}

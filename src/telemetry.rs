//! Logging on standard error, filtered by `RUST_LOG` or `GEONEX_LOG__FILTER`:
//! JSON lines for log collectors, or one compact line per event for a person at
//! a terminal (time, level, message, then the event's and its spans' fields).
//! `GEONEX_LOG__FORMAT` chooses: `json`, `text` (`pretty` is another name for
//! it) or `auto`, the default: text when standard error is a terminal.

use std::fmt;
use std::io::IsTerminal;

use geonex_shared::config::LogSettings;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

impl LogFormat {
    /// The format a setting asks for, given whether standard error is a
    /// terminal. An explicit `json` or `text` wins; `auto` (or a value not
    /// understood) picks text for a terminal and JSON otherwise.
    pub fn choose(setting: &str, stderr_is_terminal: bool) -> LogFormat {
        match setting.trim().to_ascii_lowercase().as_str() {
            "json" => LogFormat::Json,
            "text" | "pretty" => LogFormat::Text,
            _ if stderr_is_terminal => LogFormat::Text,
            _ => LogFormat::Json,
        }
    }

    fn understood(setting: &str) -> bool {
        matches!(setting.trim().to_ascii_lowercase().as_str(), "json" | "text" | "pretty" | "auto" | "")
    }
}

pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    let terminal = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match LogFormat::choose(&settings.format, terminal) {
        LogFormat::Text => {
            let colour = terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(colour).event_format(Compact).try_init()
        }
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init(),
    };
    // A second init (tests build several applications) keeps the first subscriber.
    if result.is_ok() && !LogFormat::understood(&settings.format) {
        tracing::warn!(format = %settings.format, "GEONEX_LOG__FORMAT is not json, text or auto; chose as for auto");
    }
}

/// `14:03:07.512  INFO command succeeded attempts=1 trace_id=… command_id=…`:
/// local time, level, message, the event's fields, then those of its spans
/// (outermost first). The target is shown only for other crates' events, where
/// it says whose they are.
struct Compact;

impl<S, N> FormatEvent<S, N> for Compact
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let ansi = writer.has_ansi_escapes();
        let paint = |code: &str, text: &str| if ansi { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_owned() };
        let meta = event.metadata();
        write!(writer, "{} ", paint("2", &chrono::Local::now().format("%H:%M:%S%.3f").to_string()))?;
        let (colour, name) = match *meta.level() {
            Level::ERROR => ("1;31", "ERROR"),
            Level::WARN => ("1;33", " WARN"),
            Level::INFO => ("32", " INFO"),
            Level::DEBUG => ("34", "DEBUG"),
            Level::TRACE => ("35", "TRACE"),
        };
        write!(writer, "{} ", paint(colour, name))?;
        if !meta.target().starts_with("geonex") {
            write!(writer, "{} ", paint("2", &format!("{}:", meta.target())))?;
        }
        ctx.format_fields(writer.by_ref(), event)?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    // Already styled by the field formatter when colours are on.
                    write!(writer, " {fields}")?;
                }
            }
        }
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn a_terminal_gets_text_anything_else_json_and_an_explicit_setting_wins() {
        assert_eq!(LogFormat::choose("auto", true), LogFormat::Text);
        assert_eq!(LogFormat::choose("auto", false), LogFormat::Json);
        assert_eq!(LogFormat::choose("json", true), LogFormat::Json);
        assert_eq!(LogFormat::choose("text", false), LogFormat::Text);
        assert_eq!(LogFormat::choose("pretty", false), LogFormat::Text, "the old name still works");
        assert_eq!(LogFormat::choose(" JSON ", true), LogFormat::Json);
        assert_eq!(LogFormat::choose("fancy", false), LogFormat::Json);
        assert!(!LogFormat::understood("fancy") && LogFormat::understood("auto"));
        assert_eq!(LogFormat::choose(&LogSettings::default().format, true), LogFormat::Text);
        assert_eq!(LogFormat::choose(&LogSettings::default().format, false), LogFormat::Json);
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_text_line_has_the_time_level_message_and_fields_of_the_event_and_its_spans() {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .event_format(Compact)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("command", command_id = "c-1");
            let _entered = span.enter();
            tracing::info!(attempts = 2, "command succeeded");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line = text.trim_end();
        assert_eq!(text.lines().count(), 1, "{text}");
        let (time, rest) = line.split_once(' ').unwrap();
        assert_eq!(time.len(), "14:03:07.512".len(), "{line}");
        assert!(time.chars().all(|c| c.is_ascii_digit() || c == ':' || c == '.'), "{line}");
        // The target is left out for the project's own events.
        assert_eq!(rest.trim_start(), "INFO command succeeded attempts=2 command_id=\"c-1\"");
    }
}

//! Logging: `tracing` events and spans as JSON lines (default) or text, always
//! through the [`RedactingMakeWriter`] so that no secret reaches the output.

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use super::redact::RedactingMakeWriter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            other => Err(format!("unknown log format {other:?} (json or text)")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}: {source}")]
    Filter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// The subscriber Palisade logs through, writing to `writer` (stdout in
/// production, a buffer in tests). `filter` uses `EnvFilter` syntax, e.g.
/// `info,palisade=debug`.
pub fn subscriber<W>(
    format: LogFormat,
    filter: &str,
    writer: W,
) -> Result<Box<dyn Subscriber + Send + Sync>, TelemetryError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::builder()
        .parse(filter)
        .map_err(|source| TelemetryError::Filter {
            filter: filter.to_string(),
            source,
        })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingMakeWriter::new(writer));
    Ok(match format {
        LogFormat::Text => Box::new(builder.with_ansi(false).finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(true)
                .finish(),
        ),
    })
}

/// Installs the global subscriber writing to stdout.
pub fn init(format: LogFormat, filter: &str) -> Result<(), TelemetryError> {
    install(subscriber(format, filter, std::io::stdout)?)
}

/// The log filter of the one-shot subcommands (`palisade backup`).
pub const CLI_LOG_ENV: &str = "PALISADE_LOG";

/// Installs the global subscriber of a one-shot subcommand: text on stderr
/// (stdout carries its result, e.g. `--output json`), through the same
/// redaction as the controller's; filter from `PALISADE_LOG`, default `warn`.
pub fn init_stderr() -> Result<(), TelemetryError> {
    let filter = std::env::var(CLI_LOG_ENV).unwrap_or_else(|_| "warn".to_string());
    install(subscriber(LogFormat::Text, &filter, std::io::stderr)?)
}

fn install(s: Box<dyn Subscriber + Send + Sync>) -> Result<(), TelemetryError> {
    tracing::subscriber::set_global_default(s).map_err(|_| TelemetryError::AlreadyInstalled)
}

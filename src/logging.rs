//! The process's log: the format from `log.format`, the level from `RUST_LOG` (`info` when it
//! is unset or unreadable), every line written to stderr by a thread of its own, so that an
//! event costs its formatting and a queue push, never a wait on whoever reads stderr.
//!
//! `text` is one human-readable line per event. `json` is one JSON object per line with these
//! fields, whose names are stable:
//!
//! - `timestamp`: when, RFC 3339 in UTC with microseconds (`2026-12-03T05:45:41.123456Z`);
//! - `level`: `TRACE`, `DEBUG`, `INFO`, `WARN` or `ERROR`;
//! - `target`: the module the event comes from (`sweeplb::discovery`, ...), or
//!   `sweeplb::access` for the access log;
//! - `message`: the event's sentence, when it has one (the access log's lines have none);
//! - the event's own fields beside them, at the top level (`addr`, `error`, ...; the access
//!   log's are `client`, `method`, `path`, `status`, `backend`, `duration_ms`, `bytes`,
//!   `session`). No span fields: the balancer's events carry what they need themselves.
//!
//! The format can be changed while running ([`Handle::apply`]); the level cannot. This module
//! does not decide which requests are logged: the proxy does, behind `log.access`.

use std::sync::Mutex;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::{Log, LogFormat};

/// The subscriber the formatting layer sits on: the registry, filtered by `RUST_LOG`.
type Filtered = tracing_subscriber::layer::Layered<EnvFilter, Registry>;
/// One of the two formatting layers, boxed so that a reload can swap one for the other.
type Format = Box<dyn Layer<Filtered> + Send + Sync>;

/// The log writer's guard: dropped, it writes out what is queued. Kept here rather than in
/// `main` so that the exits that do not return from `main` (a second signal) flush too.
static WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Lines the log holds for its writer thread before an event waits for room.
const QUEUED_LINES: usize = 16_384;

/// How to change the running log's format.
#[derive(Clone)]
pub struct Handle {
    reload: reload::Handle<Format, Filtered>,
    writer: NonBlocking,
    ansi: bool,
}

/// The log could not be started or changed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a logger was already started in this process")]
    AlreadyStarted,
    #[error("the log format could not be changed: {0}")]
    Reload(#[from] reload::Error),
}

/// Starts the process's log in `format`; once per process. Call [`flush`] before exiting.
pub fn start(format: LogFormat) -> Result<Handle, Error> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Stderr is unbuffered: buffered, the writer thread makes one write(2) per batch of
    // queued lines rather than one per line. It flushes whenever the queue is empty, so a line
    // is never held back while the balancer is quiet.
    let stderr = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    start_writing(format, filter, stderr, ansi)
}

fn start_writing(
    format: LogFormat,
    filter: EnvFilter,
    out: impl std::io::Write + Send + 'static,
    ansi: bool,
) -> Result<Handle, Error> {
    // Not lossy: a line is never dropped. A request waits on the log only when the queue's
    // lines are all waiting behind a reader of stderr that has stopped reading. 16,384 of
    // them are half a second of access log at 30,000 requests a second; the queue is
    // allocated and touched whole at start (32 bytes a line), so the library's default of
    // 128,000 held 4 MB of every process's memory for a stall that long.
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUED_LINES)
        .lossy(false)
        .thread_name("sweeplb-log")
        .finish(out);
    let (layer, reload) = reload::Layer::new(layer(format, writer.clone(), ansi));
    tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init()
        .map_err(|_| Error::AlreadyStarted)?;
    *WRITER.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
    Ok(Handle {
        reload,
        writer,
        ansi,
    })
}

impl Handle {
    /// Writes the lines of events from now on in `log.format`. (`log.access` is the proxy's:
    /// this does not read it.)
    pub fn apply(&self, log: Log) -> Result<(), Error> {
        self.reload
            .reload(layer(log.format, self.writer.clone(), self.ansi))?;
        Ok(())
    }
}

/// Writes out every queued line, waiting a second at most; lines logged after it are lost.
/// Call it last, before the process exits.
pub fn flush() {
    let guard = WRITER.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(guard);
}

fn layer(format: LogFormat, writer: NonBlocking, ansi: bool) -> Format {
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Text => fmt.with_ansi(ansi).boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What the log wrote, shared with the test.
    #[derive(Clone, Default)]
    struct Written(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Written {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    // One test per process (nextest's way): it starts the process's logger.
    #[test]
    fn apply_switches_the_format_of_the_lines_that_follow() {
        let written = Written::default();
        let handle = start_writing(
            LogFormat::Text,
            EnvFilter::new("info"),
            written.clone(),
            false,
        )
        .unwrap();
        tracing::info!(target: "sweeplb::test", n = 1, "as text");
        handle
            .apply(Log {
                format: LogFormat::Json,
                access: false,
            })
            .unwrap();
        tracing::info!(target: "sweeplb::test", n = 2, "as json");
        flush();
        let text = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains("INFO sweeplb::test: as text n=1"),
            "{}",
            lines[0]
        );
        let json: serde_json::Value = serde_json::from_str(lines[1]).expect(lines[1]);
        assert_eq!(json["level"], "INFO", "{json}");
        assert_eq!(json["target"], "sweeplb::test", "{json}");
        assert_eq!(json["message"], "as json", "{json}");
        assert_eq!(json["n"], 2, "{json}");
        assert!(
            json["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{json}"
        );
    }
}

//! Terminal logs: one line per event, prefixed with the part of the stack that logged it
//! (`[gateway]`, `[mapping]`, `[relay]`, `[functions]`, `[stack]`), so the interleaved
//! output of every part stays readable.

use std::fmt;
use std::io::Write;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The part a log target belongs to: the module under `local_stack::`.
pub fn part(target: &str) -> &str {
    match target.strip_prefix("local_stack::") {
        Some(rest) => match rest.split("::").next().unwrap_or(rest) {
            "functions" | "build" => "functions",
            "gateway" | "apigw" | "invoke" => "gateway",
            "mapping" | "rmq" => "mapping",
            "relay" => "relay",
            _ => "stack",
        },
        None if target.starts_with("lapin") || target.starts_with("amq_protocol") => "mapping",
        None => "stack",
    }
}

struct Prefixed;

impl<S, N> FormatEvent<S, N> for Prefixed
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        write!(writer, "[{}] ", part(metadata.target()))?;
        match *metadata.level() {
            Level::ERROR => write!(writer, "ERROR ")?,
            Level::WARN => write!(writer, "WARN ")?,
            _ => {}
        }
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Logs go to stderr; stdout carries only the ready line. `RUST_LOG` filters as usual; the
/// default leaves the AMQP client out: the mapping logs every error it gets from it.
pub fn init() {
    let filter = EnvFilter::try_from_env("LOCAL_STACK_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=off,amq_protocol=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .event_format(Prefixed)
        .init();
}

/// Passes a line of a child process's output through under `prefix`.
pub fn child_line(prefix: &str, line: &str) {
    let mut stderr = std::io::stderr().lock();
    // A closed terminal is no reason to stop the stack.
    let _ = writeln!(stderr, "[{prefix}] {line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_map_to_parts() {
        assert_eq!(part("local_stack::gateway"), "gateway");
        assert_eq!(part("local_stack::apigw"), "gateway");
        assert_eq!(part("local_stack::mapping"), "mapping");
        assert_eq!(part("local_stack::relay"), "relay");
        assert_eq!(part("local_stack::functions"), "functions");
        assert_eq!(part("local_stack"), "stack");
        assert_eq!(part("lapin::channel"), "mapping");
    }
}

//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info`, with lapin's chatter at
//! `warn` and Postgres's notices, such as "relation _sqlx_migrations already exists, skipping"
//! at each start, shown only when asked for: `RUST_LOG=debug` or
//! `RUST_LOG=info,sqlx::postgres::notice=info`). Colours only when stderr is a terminal and
//! `NO_COLOR` is unset (<https://no-color.org>), so logs piped to a file or a collector are plain.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The filter when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,lapin=warn,sqlx::postgres::notice=warn";

pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Whether to colour: on a terminal, unless `NO_COLOR` is set to anything but the empty string.
pub fn colours(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours(true, None));
        assert!(colours(true, Some("".as_ref())));
        assert!(!colours(true, Some("1".as_ref())));
        assert!(!colours(false, None));
    }
}

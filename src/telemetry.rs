//! Logging set-up, once per process: `RUST_LOG` filters, default `info`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Colours only on a terminal.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

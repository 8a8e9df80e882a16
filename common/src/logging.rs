//! Logging set-up shared by the binaries (`tandem-agent`, its shims, `tandem-coordinator`).

/// Sets up logging to stderr: journald-friendly (no colours unless a terminal), level from
/// `RUST_LOG` or `default_level`. A second call does nothing.
pub fn init_tracing(default_level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

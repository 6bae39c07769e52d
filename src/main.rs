//! The `canaryd` binary: parses the command line, sets up tracing, runs the command, exits.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

/// jemalloc, built to purge what it no longer uses (Cargo.toml, .cargo/config.toml).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if let Some(format) = cli.command.log_format() {
        init_tracing(format);
    }
    match cli.command.run() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr (in colour on a terminal), filtered by `RUST_LOG`.
fn init_tracing(format: cli::LogFormat) {
    use std::io::IsTerminal as _;
    let log = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // notify reports harmless inotify bookkeeping at INFO.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,notify=warn")),
        );
    match format {
        cli::LogFormat::Human => log.init(),
        cli::LogFormat::Json => log.json().init(),
    }
}

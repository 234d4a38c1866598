//! `countersign`: inspect, sign and verify Safe transactions from the command line.
//!
//! Exit codes: 0 done; 1 refused (a guard, a claimed hash, a broken audit chain, a signature
//! that is not an owner's); 2 bad input or usage; 3 any other failure (store, keyring, files).

mod args;
mod commands;
mod context;
mod failure;
mod report;

use std::process::ExitCode;

use clap::Parser;

use crate::args::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: could not start the async runtime: {error}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(outcome) => ExitCode::from(outcome.code()),
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

fn init_logging(verbose: bool) {
    // The commands print what happened; the log adds state changes only when asked for.
    let default = if verbose { "info" } else { "error" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("COUNTERSIGN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

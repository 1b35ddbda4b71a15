use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use turnpike_counter::Cli;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.validate {
        return if turnpike_counter::validate(&cli) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a terminal: log files and pipes get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::try_from(cli.workers).unwrap_or(2))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("turnpike-counter: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(turnpike_counter::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Once, on stderr, plain: what is wrong, where, and what to do.
            eprintln!("turnpike-counter: {error}");
            ExitCode::FAILURE
        }
    }
}

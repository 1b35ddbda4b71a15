use clap::Parser;
use tracing_subscriber::EnvFilter;
use turnpike_collector::config::{Args, Command};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let result = match args.command {
        Some(Command::Reconcile(reconcile)) => turnpike_collector::reconcile::main(reconcile)
            .await
            .map_err(|e| e.to_string()),
        Some(Command::Billing(billing)) => turnpike_collector::billing::cli::main(billing)
            .await
            .map_err(|e| e.to_string()),
        Some(Command::Anomalies(replay)) => turnpike_collector::anomalies::replay::main(replay)
            .await
            .map_err(|e| e.to_string()),
        None => turnpike_collector::server::run(args.serve)
            .await
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // Once, on stderr: the log line and the message were the same words twice.
            eprintln!("turnpike-collector: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

use clap::Parser;
use tracing_subscriber::EnvFilter;
use turnpike_collector::config::Args;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match turnpike_collector::server::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "turnpike-collector failed");
            eprintln!("turnpike-collector: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

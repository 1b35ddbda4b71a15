//! `turnpike-dev`: mint demo JWTs, print a JWKS, render the Envoy config, run the demo
//! upstream API, run the local Stripe Billing Meters fake, load a counter.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use turnpike_devtools::render::{parse_assignment, render_envoy, values_with_defaults};
use turnpike_devtools::token::{self, TokenSpec, DEFAULT_AUDIENCE, DEFAULT_ISSUER, DEFAULT_KID};
use turnpike_devtools::{jwks, load_counter, read_file, stripe_fake, upstream, DevError};

const DEFAULT_KEY: &str = "config/demo/jwt-signing-key.pem";

#[derive(Parser)]
#[command(name = "turnpike-dev", about = "Turnpike developer tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print an RS256 JWT.
    Mint {
        #[arg(long, required_unless_present = "no_tenant")]
        tenant: Option<String>,
        #[arg(long)]
        plan: Option<String>,
        /// Dotted path of the tenant claim (`org.id` nests it).
        #[arg(long, default_value = "tenant")]
        claim: String,
        #[arg(long, default_value = "plan")]
        plan_claim: String,
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
        /// Mint an already expired token.
        #[arg(long)]
        expired: bool,
        /// Leave the tenant claim out.
        #[arg(long, conflicts_with = "tenant")]
        no_tenant: bool,
        #[arg(long, default_value = DEFAULT_KEY)]
        key: PathBuf,
        #[arg(long, default_value = DEFAULT_KID)]
        kid: String,
        #[arg(long, default_value = DEFAULT_ISSUER)]
        issuer: String,
        #[arg(long, default_value = DEFAULT_AUDIENCE)]
        audience: String,
    },
    /// Print the JWKS of a private key.
    Jwks {
        #[arg(long, default_value = DEFAULT_KEY)]
        key: PathBuf,
        #[arg(long, default_value = DEFAULT_KID)]
        kid: String,
    },
    /// Render the Envoy config template.
    RenderEnvoy {
        #[arg(long, default_value = "envoy/envoy.yaml.tmpl")]
        template: PathBuf,
        #[arg(long, default_value = "envoy/filter-config.json")]
        filter_config: PathBuf,
        /// NAME=VALUE for a `${NAME}` placeholder (repeatable).
        #[arg(long = "set", value_parser = parse_set)]
        set: Vec<(String, String)>,
        /// A JSON merge patch (RFC 7396) applied to the filter config.
        #[arg(long)]
        patch_filter: Option<String>,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run the demo upstream API.
    Upstream {
        #[arg(
            long,
            env = "TURNPIKE_UPSTREAM_LISTEN",
            default_value = "127.0.0.1:8081"
        )]
        listen: SocketAddr,
    },
    /// Send consumes straight to a counter (no Envoy) for a while, over h2c with the
    /// service token, and print throughput and latency (bench/capacity.sh).
    LoadCounter {
        /// The counter's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        url: String,
        /// File holding the service token; or TURNPIKE_SERVICE_TOKEN (the first of a
        /// comma-separated list).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Distinct tenants, used in turn.
        #[arg(long, default_value_t = 1000)]
        tenants: u32,
        /// Requests in flight.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// HTTP/2 connections.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// The meters of every consume, `meter=cost,...`.
        #[arg(long, default_value = "requests=1")]
        meters: String,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Run a local stand-in for Stripe's Billing Meters API (see docs/stripe-fake.md).
    StripeFake {
        #[arg(
            long,
            env = "TURNPIKE_STRIPE_FAKE_LISTEN",
            default_value = stripe_fake::DEFAULT_LISTEN
        )]
        listen: SocketAddr,
        /// File of accepted secret keys, one per line (`#` comments).
        #[arg(long, conflicts_with = "api_key")]
        api_key_file: Option<PathBuf>,
        /// The accepted secret key.
        #[arg(
            long,
            env = "TURNPIKE_STRIPE_FAKE_KEY",
            default_value = stripe_fake::DEFAULT_API_KEY,
            hide_env_values = true
        )]
        api_key: String,
        /// Keep meters, events and idempotency results in this JSON file across
        /// restarts (in memory only without it).
        #[arg(long)]
        state: Option<PathBuf>,
    },
}

fn parse_set(arg: &str) -> Result<(String, String), String> {
    parse_assignment(arg).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("turnpike-dev: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), DevError> {
    match command {
        Command::Mint {
            tenant,
            plan,
            claim,
            plan_claim,
            ttl_secs,
            expired,
            no_tenant,
            key,
            kid,
            issuer,
            audience,
        } => {
            let spec = TokenSpec {
                tenant: if no_tenant { None } else { tenant },
                plan,
                tenant_claim: claim,
                plan_claim,
                issuer,
                audience,
                ttl_secs,
                expired,
            };
            println!("{}", token::mint(&spec, &read_file(&key)?, &kid)?);
            Ok(())
        }
        Command::Jwks { key, kid } => {
            let set = jwks::jwks_for_private_key(&read_file(&key)?, &kid)?;
            let json = serde_json::to_string_pretty(&set).map_err(|source| DevError::Json {
                what: "jwks".into(),
                source,
            })?;
            println!("{json}");
            Ok(())
        }
        Command::RenderEnvoy {
            template,
            filter_config,
            set,
            patch_filter,
            out,
        } => {
            let patch = patch_filter
                .map(|p| {
                    serde_json::from_str(&p).map_err(|source| DevError::Json {
                        what: "--patch-filter".into(),
                        source,
                    })
                })
                .transpose()?;
            let template_text = read_text(&template)?;
            let config_text = read_text(&filter_config)?;
            let yaml = render_envoy(
                &template_text,
                &config_text,
                &values_with_defaults(set),
                patch.as_ref(),
            )?;
            match out {
                Some(path) => std::fs::write(&path, yaml).map_err(|source| DevError::Io {
                    path: path.display().to_string(),
                    source,
                }),
                None => {
                    print!("{yaml}");
                    Ok(())
                }
            }
        }
        Command::Upstream { listen } => run_upstream(listen),
        Command::LoadCounter {
            url,
            token_file,
            tenants,
            concurrency,
            connections,
            duration,
            meters,
            json,
        } => {
            let token = match token_file {
                Some(path) => read_text(&path)?.trim().to_owned(),
                None => std::env::var("TURNPIKE_SERVICE_TOKEN")
                    .ok()
                    .and_then(|v| v.split(',').next().map(|t| t.trim().to_owned()))
                    .filter(|t| !t.is_empty())
                    .ok_or(DevError::InvalidArg {
                        field: "--token-file",
                        reason: "give the counter's service token (--token-file or \
                                 TURNPIKE_SERVICE_TOKEN)"
                            .into(),
                    })?,
            };
            let run_id = format!(
                "lc{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis())
            );
            let meters =
                load_counter::parse_meters(&meters).map_err(|reason| DevError::InvalidArg {
                    field: "--meters",
                    reason,
                })?;
            let config = load_counter::LoadConfig {
                url,
                token,
                tenants,
                concurrency,
                connections,
                duration: std::time::Duration::from_secs(duration),
                run_id,
                meters,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|source| DevError::Io {
                    path: "tokio runtime".into(),
                    source,
                })?;
            let report = runtime.block_on(load_counter::run(config))?;
            if json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                println!(
                    "{} requests in {:.1} s: {:.0} consumes/s ({} allowed, {} denied, {} errors), \
                     p50 {:.2} ms, p99 {:.2} ms",
                    report.requests,
                    report.seconds,
                    report.consumes_per_sec,
                    report.allowed,
                    report.denied,
                    report.errors,
                    report.p50_ms,
                    report.p99_ms
                );
            }
            Ok(())
        }
        Command::StripeFake {
            listen,
            api_key_file,
            api_key,
            state,
        } => {
            let api_keys = match api_key_file {
                Some(path) => {
                    let keys = stripe_fake::parse_key_file(&read_text(&path)?);
                    if keys.is_empty() {
                        return Err(DevError::InvalidArg {
                            field: "--api-key-file",
                            reason: format!("{} holds no key", path.display()),
                        });
                    }
                    keys
                }
                None => vec![api_key],
            };
            run_stripe_fake(
                listen,
                stripe_fake::FakeConfig {
                    api_keys,
                    state_file: state,
                },
            )
        }
    }
}

fn read_text(path: &std::path::Path) -> Result<String, DevError> {
    String::from_utf8(read_file(path)?).map_err(|e| DevError::InvalidArg {
        field: "file",
        reason: format!("{} is not UTF-8: {e}", path.display()),
    })
}

fn run_upstream(listen: SocketAddr) -> Result<(), DevError> {
    let io_err = |source| DevError::Io {
        path: listen.to_string(),
        source,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io_err)?;
    runtime.block_on(async {
        let (listener, addr) = upstream::bind(listen).await.map_err(io_err)?;
        tracing::info!(%addr, "upstream listening");
        upstream::serve(listener, shutdown_signal())
            .await
            .map_err(io_err)
    })
}

fn run_stripe_fake(listen: SocketAddr, config: stripe_fake::FakeConfig) -> Result<(), DevError> {
    let io_err = |source| DevError::Io {
        path: listen.to_string(),
        source,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io_err)?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(io_err)?;
        let addr = listener.local_addr().map_err(io_err)?;
        tracing::info!(%addr, keys = config.api_keys.len(), state = ?config.state_file, "stripe-fake listening");
        stripe_fake::serve(listener, config, shutdown_signal())
            .await
            .map_err(io_err)
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

//! `turnpike-dev`: mint demo JWTs, print a JWKS, render the Envoy config, run the demo
//! upstream API, run the local Stripe Billing Meters fake, load a counter.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use turnpike_devtools::render::{parse_assignment, render_envoy, values_with_defaults};
use turnpike_devtools::token::{self, TokenSpec, DEFAULT_AUDIENCE, DEFAULT_ISSUER, DEFAULT_KID};
use turnpike_devtools::{
    find_demo_key, jwks, load_counter, read_file, stripe_fake, upstream, DevError,
};

#[derive(Parser)]
#[command(
    name = "turnpike-dev",
    about = "Turnpike developer tools: demo tokens, JWKS, the Envoy config, a demo API, a Stripe fake",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the signing key is: `--key`, else `TURNPIKE_DEMO_KEY`, else the repository's
/// demo key (found from the working directory or from this binary's location).
#[derive(clap::Args)]
struct KeyArgs {
    /// RSA private key (PEM) to sign with. Default: $TURNPIKE_DEMO_KEY, else
    /// config/demo/jwt-signing-key.pem of this repository (looked up from the working
    /// directory and from where this binary lives, so any directory works).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Key id (`kid`) in the token header and the JWKS; Envoy picks the JWKS key by it.
    #[arg(long, default_value = DEFAULT_KID)]
    kid: String,
}

#[derive(Subcommand)]
enum Command {
    /// Print an RS256 JWT for a tenant (on stdout; its lifetime on stderr).
    Mint {
        /// Tenant id, put in the tenant claim (required unless --no-tenant).
        #[arg(long, required_unless_present = "no_tenant")]
        tenant: Option<String>,
        /// Plan name, put in the plan claim. A tenant override in the plans file wins.
        #[arg(long)]
        plan: Option<String>,
        /// Dotted path of the tenant claim (`org.id` nests it); must match the filter's
        /// `tenant.claim`.
        #[arg(long, default_value = "tenant")]
        claim: String,
        /// Claim holding the plan; must match the filter's `tenant.plan_claim`.
        #[arg(long, default_value = "plan")]
        plan_claim: String,
        /// How long the token is valid, in seconds (Envoy refuses it afterwards with
        /// `Jwt is expired`: mint another).
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
        /// Mint an already expired token (to see Envoy refuse it).
        #[arg(long)]
        expired: bool,
        /// Leave the tenant claim out (to see the filter's 401 missing-tenant).
        #[arg(long, conflicts_with = "tenant")]
        no_tenant: bool,
        #[command(flatten)]
        key: KeyArgs,
        /// `iss` claim; must be the issuer jwt_authn expects (template: JWT_ISSUER).
        #[arg(long, default_value = DEFAULT_ISSUER)]
        issuer: String,
        /// `aud` claim; must be an audience jwt_authn expects (template: JWT_AUDIENCE).
        #[arg(long, default_value = DEFAULT_AUDIENCE)]
        audience: String,
        /// Print only the token (no lifetime line on stderr).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Print the JWKS (public key set) of a private key, for jwt_authn's `local_jwks`.
    Jwks {
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Render the Envoy config template, filling `${NAME}` placeholders.
    RenderEnvoy {
        /// The template.
        #[arg(long, default_value = "envoy/envoy.yaml.tmpl")]
        template: PathBuf,
        /// The filter configuration (JSON), inlined as `${FILTER_CONFIG}`.
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
    /// Run the demo upstream API: echoes requests, `/status/{code}`, and an LLM-shaped
    /// `POST /v1/chat/completions` (see `turnpike-dev upstream --help`).
    #[command(after_help = UPSTREAM_HELP)]
    Upstream {
        /// Address to serve on.
        #[arg(
            long,
            env = "TURNPIKE_UPSTREAM_LISTEN",
            default_value = "127.0.0.1:8080"
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
        /// Address to serve on.
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

const UPSTREAM_HELP: &str = "\
Routes:
  GET  /healthz                 {\"status\":\"ok\"}
  ANY  /status/{code}           that status (?delay_ms=N waits first)
  POST /v1/chat/completions     OpenAI-style answer with usage; \"stream\": true for SSE
  anything else                 echoes method, path, query and headers as JSON

Chat completion token counts: prompt = words in the messages, completion =
x-demo-completion-tokens, else max_tokens, else 16. Test knobs (request headers):
x-demo-chunk-tokens, x-demo-chunk-delay-ms, x-demo-split-usage, x-demo-usage
(nan|negative|huge|missing), x-demo-status (400-599, body keeps usage),
x-demo-usage-header (header|trailer: x-usage-tokens). See crates/devtools/src/llm.rs.";

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
        // Colour only for a terminal: log files and pipes get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
            issuer,
            audience,
            quiet,
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
            let key_path = find_demo_key(key.key.as_deref(), &env_var)?;
            println!("{}", token::mint(&spec, &read_file(&key_path)?, &key.kid)?);
            if !quiet {
                eprintln!(
                    "turnpike-dev: {}",
                    token::lifetime_note(&spec, token::now_unix())
                );
            }
            Ok(())
        }
        Command::Jwks { key } => {
            let key_path = find_demo_key(key.key.as_deref(), &env_var)?;
            let set = jwks::jwks_for_private_key(&read_file(&key_path)?, &key.kid)?;
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

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_of_every_command_has_help_text() {
        Cli::command().debug_assert();
        let mut missing = Vec::new();
        for sub in Cli::command().get_subcommands() {
            assert!(sub.get_about().is_some(), "{} has no about", sub.get_name());
            for arg in sub.get_arguments() {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{} --{}", sub.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }

    #[test]
    fn the_upstream_does_not_default_to_the_counter_port() {
        let cli = Cli::try_parse_from(["turnpike-dev", "upstream"]).unwrap();
        match cli.command {
            Command::Upstream { listen } => assert_eq!(listen.port(), 8080),
            _ => unreachable!(),
        }
    }
}

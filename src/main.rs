//! `our-memories`: reads the environment, starts the server, stops on SIGINT or SIGTERM.
//! `our-memories healthcheck` instead asks the server on `HOST`:`PORT` whether it is healthy
//! (exit 0) or not (exit 1): the container's HEALTHCHECK. It reads nothing else and starts no
//! runtime. `--help` and `--version` print and exit; any other argument is an error (exit 2).

use std::process::ExitCode;

use actors::Clock;
use our_memories::{app::App, config::Config, healthcheck, shutdown, telemetry};

/// What `--help` prints.
const USAGE: &str = "\
Signaling, pairing and encrypted-backup server for the Our Memories app.

Usage:
  our-memories               serve (configured by environment variables only)
  our-memories healthcheck   exit 0 if the server on HOST:PORT answers /health with 200, else 1
  our-memories --help        this text
  our-memories --version     the version

With no variables set it serves on 0.0.0.0:3000 with its data in ./data. Every variable is
documented in env.example; the wire contract is docs/protocol.md.";

/// What `healthcheck --help` prints instead of probing.
const HEALTHCHECK_USAGE: &str = "\
Usage: our-memories healthcheck

Asks the server on HOST:PORT (the same variables as the server; 127.0.0.1 when HOST is
0.0.0.0) for /health: exit 0 on 200, 1 otherwise (2 for an unknown argument).";

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("healthcheck") => {
            return match std::env::args().nth(2).as_deref() {
                None => probe(),
                Some("-h" | "--help") => {
                    println!("{HEALTHCHECK_USAGE}");
                    ExitCode::SUCCESS
                }
                Some(other) => {
                    eprintln!("unknown argument {other:?}; see our-memories healthcheck --help");
                    ExitCode::from(2)
                }
            };
        }
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("-V" | "--version") => {
            println!("our-memories {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("unknown argument {other:?}; see our-memories --help");
            return ExitCode::from(2);
        }
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.environment);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> ExitCode {
    match Box::pin(App::build(config, Clock::System)).await {
        Ok(app) => {
            Box::pin(app.run_until_stopped(shutdown::signal())).await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            // Logging is set up by now: one line, on stderr, in the log's format.
            tracing::error!("cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `our-memories healthcheck`: exit 0 only on a 200 from `/health`; any failure is 1, the
/// code container runtimes read as "unhealthy".
fn probe() -> ExitCode {
    let checked = Config::listen_addr_from_env()
        .map_err(|e| e.to_string())
        .and_then(|addr| healthcheck::probe(healthcheck::target(addr)));
    match checked {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

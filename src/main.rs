//! `our-memories`: reads the environment, starts the server, stops on SIGINT or SIGTERM.
//! `our-memories healthcheck` instead asks the server on `HOST`:`PORT` whether it is healthy
//! (exit 0) or not (exit 1): the container's HEALTHCHECK. It reads nothing else and starts no
//! runtime.

use std::process::ExitCode;

use actors::Clock;
use our_memories::{app::App, config::Config, healthcheck, shutdown, telemetry};

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return probe();
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
            tracing::error!("cannot start: {e}");
            eprintln!("cannot start: {e}");
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

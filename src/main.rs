//! `our-memories`: reads the environment, starts the server, stops on SIGINT or SIGTERM.
//! `our-memories healthcheck` instead asks the server the same environment describes whether
//! it is healthy (exit 0) or not (exit 1): the container's HEALTHCHECK.

use std::process::ExitCode;

use actors::Clock;
use our_memories::{app::App, config::Config, healthcheck, shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return match healthcheck::probe(healthcheck::target(config.addr)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("unhealthy: {e}");
                ExitCode::FAILURE
            }
        };
    }
    telemetry::init(config.environment);
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

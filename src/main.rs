//! `our-memories`: reads the environment, starts the server, stops on SIGINT or SIGTERM.

use std::process::ExitCode;

use actors::Clock;
use our_memories::{app::App, config::Config, shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
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

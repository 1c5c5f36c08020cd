//! `mesh-node`: run a node, inspect and use a running cluster, manage credentials.
//!
//! Exit codes: 0 success; 1 the operation failed (a call's error reply, an unreachable seed, a
//! subscriber that did not acknowledge); 2 bad usage (flags, JSON, files).
//!
//! This file parses the command line, starts the runtime and dispatches. Each command lives with
//! its concern: `run.rs` (a node), `inspect.rs` (talking to a running cluster), `keys.rs`
//! (credentials and the cluster CA), `demo.rs`; `args.rs` holds the command line itself.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::args::{CaCommand, Cli, Command};
use crate::error::Failure;

mod args;
mod demo;
mod error;
mod heap;
mod http;
mod inspect;
mod keys;
mod run;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // Commands that print results keep the log quiet unless asked.
        let default = if matches!(cli.command, Command::Run(_)) {
            "info"
        } else {
            "warn"
        };
        tracing_subscriber::EnvFilter::new(default)
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Run(args) => run::run_node(args).await,
        Command::Demo => demo::run().await.map_err(Failure::from),
        Command::Keygen => {
            println!("{}", keys::new_key());
            Ok(())
        }
        Command::Ca(CaCommand::Init { dir }) => keys::ca_init(&dir),
        Command::Ca(CaCommand::Issue { name, addr, dir }) => keys::ca_issue(&dir, &name, addr),
        Command::Members(i) => inspect::members(&i).await,
        Command::Services { name, inspect } => inspect::services(&inspect, name.as_deref()).await,
        Command::Call {
            service,
            endpoint,
            body,
            timeout_ms,
            inspect,
        } => {
            inspect::call(
                &inspect,
                &service,
                &endpoint,
                &body,
                Duration::from_millis(timeout_ms),
            )
            .await
        }
        Command::Health { node, creds, json } => inspect::health(&creds, node, json).await,
        Command::Stats(i) => inspect::stats(&i).await,
        Command::Watch(i) => inspect::watch(&i).await,
        Command::Publish {
            topic,
            body,
            ack,
            inspect,
        } => inspect::publish(&inspect, &topic, &body, ack).await,
        Command::Subscribe {
            topic,
            queue,
            inspect,
        } => inspect::subscribe(&inspect, &topic, queue).await,
    }
}

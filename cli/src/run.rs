//! `mesh-node run`: a node from flags, environment and `--config`, its optional HTTP listener,
//! the membership presets, and the signals that make it leave gracefully.

use anyhow::Context;
use mesh_membership::MembershipConfig;
use mesh_node::{Node, NodeBuilder};

use crate::args::RunArgs;
use crate::error::{usage, Failure};
use crate::http;
use crate::keys::credentials;

/// The membership preset `name` (`lan`, `wan` or `local`) for cluster `cluster`.
pub(crate) fn preset(name: &str, cluster: &str) -> Result<MembershipConfig, Failure> {
    let mut c = match name {
        "lan" => MembershipConfig::lan(32),
        "wan" => MembershipConfig::wan(32),
        "local" => MembershipConfig::local(),
        other => {
            return Err(usage(anyhow::anyhow!(
                "unknown preset {other:?}: lan, wan or local"
            )))
        }
    };
    c.cluster = cluster.to_owned();
    Ok(c)
}

/// Runs a node until SIGINT or SIGTERM, then leaves the cluster.
pub(crate) async fn run_node(mut args: RunArgs) -> Result<(), Failure> {
    args.apply_config_file().map_err(usage)?;
    let creds = credentials(&args.creds)?;
    let mut b: NodeBuilder = Node::builder()
        .bind(args.bind)
        .seeds(args.join.clone())
        .credentials(creds)
        .membership(preset(&args.preset, &args.creds.cluster)?);
    if let Some(n) = &args.name {
        b = b.name(n.clone());
    }
    if let Some(a) = args.advertise {
        b = b.advertise(a);
    }
    let node = b.spawn().await?;
    println!("{} running at {}", node.name(), node.addr());
    let trimmer = tokio::spawn(crate::heap::trim_periodically());
    let http = match args.http {
        Some(addr) => Some(
            http::serve(node.clone(), addr)
                .await
                .with_context(|| format!("HTTP listener on {addr}"))?,
        ),
        None => None,
    };
    shutdown_signal().await;
    trimmer.abort();
    tracing::info!("signal received: leaving the cluster");
    if let Some(h) = http {
        h.abort();
    }
    node.shutdown().await;
    Ok(())
}

/// Resolves on SIGINT or (on Unix) SIGTERM.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
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
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

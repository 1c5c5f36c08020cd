//! Resident memory of a node:
//!
//! - **idle**: a real node in a process of its own, alone, serving one service. The bench re-runs
//!   its own binary as that node (`--child node`), set up as `mesh-node run` sets up a node (a
//!   multi-threaded runtime with 2 workers), and reads `VmRSS` from `/proc`.
//! - **registry**: the idle figure plus what holding a 1,000-member registry adds to a node,
//!   measured in another process of its own (`--child registry`) as the RSS growth per member of
//!   a simulated 1,000-member cluster that runs the real membership core.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use mesh_membership::MembershipConfig;
use mesh_node::{typed, Credentials, Node, Service};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::report::Report;

/// Members of the large cluster, the measured node included.
const CLUSTER: usize = 1000;

/// What the measured child process runs: a node that prints `ready N` each time it sees a new
/// number of active members, until killed.
pub(crate) async fn child(join: Vec<std::net::SocketAddr>) -> anyhow::Result<()> {
    let node = Node::builder()
        .name("measured")
        .credentials(Credentials::key("bench")?)
        .membership(config())
        .seeds(join)
        .service(service(0))
        .spawn()
        .await?;
    let mut last = 0;
    loop {
        let n = node.membership().directory().nodes_of("Swarm").len();
        if n != last {
            println!("ready {n}");
            last = n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The WAN preset for 1,000 members: its slower probes and gossip are what one process can
/// sustain for 999 members, each with its own QUIC endpoint and handshakes.
fn config() -> MembershipConfig {
    MembershipConfig::wan(CLUSTER as u32)
}

/// A service with two endpoints and some metadata: the record of an ordinary node.
fn service(i: usize) -> Service {
    Service::new("Swarm")
        .version("1.0.0")
        .metadata("zone", format!("z{}", i % 3))
        .idempotent_endpoint("Get", typed(|_r, x: u64| async move { Ok(x) }))
        .endpoint("Put", typed(|_r, x: u64| async move { Ok(x) }))
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// Starts the measured node, waits until it serves and sees `members` nodes of `Swarm`, lets it
/// settle for `settle`, and returns its resident memory in KiB.
async fn measure(
    join: Option<std::net::SocketAddr>,
    members: usize,
    settle: Duration,
) -> anyhow::Result<(u64, Duration)> {
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.arg("--child").arg("node");
    if let Some(j) = join {
        cmd.arg("--join").arg(j.to_string());
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the measured node")?;
    let pid = child.id().context("child has no pid")?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let mut report_at = started;
    let mut seen = 0;
    while seen < members {
        let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
            .await
            .with_context(|| {
                format!("the measured node saw {seen} of {members} members in 120 s")
            })??
            .context("the measured node exited")?;
        seen = line.trim_start_matches("ready ").parse()?;
        if report_at.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "memory: the measured node sees {seen} of {members} members after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            report_at = Instant::now();
        }
    }
    let converged = started.elapsed();
    // Memory is read after a quiet period, not as a synchronisation: what is measured is the
    // node at rest in a converged cluster.
    tokio::time::sleep(settle).await;
    let rss = rss_kib(pid)?;
    child.kill().await?;
    Ok((rss, converged))
}

/// What the `--child registry` process runs: 1,000 simulated members, each the real membership
/// core holding the whole cluster's registry, joined in waves and settled; prints the resident
/// memory each one adds (the process's RSS growth over the run, divided by the members).
pub(crate) fn registry_child() -> anyhow::Result<()> {
    let scenario = mesh_simulations::Scenario {
        name: "registry-1000".into(),
        nodes: CLUSTER,
        seeds: vec![1],
        preset: "lan".into(),
        duration_s: 30.0,
        wave: Some(100),
        wave_every_s: 1.0,
        network: mesh_simulations::Network::default(),
        events: Vec::new(),
    };
    let sim = mesh_simulations::Sim::new(&scenario, 1).map_err(anyhow::Error::msg)?;
    let report = sim.run_measured(true);
    let per_node = report
        .mem_per_node_bytes
        .context("the simulation measured no memory")?;
    println!("{per_node}");
    Ok(())
}

pub(crate) async fn run(report: &Report) -> anyhow::Result<()> {
    let (idle, _) = measure(None, 1, Duration::from_secs(2)).await?;
    report.memory("idle", 1, idle, None);

    // A real 1,000-member cluster does not fit in this bench: 999 QUIC nodes in one process
    // spend their CPU on handshakes and never converge (tried; see docs/BENCHMARKS.md). The
    // registry's own cost is measured on the simulated cluster instead.
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--child", "registry"])
        .stderr(Stdio::inherit())
        .output()
        .await
        .context("running the registry simulation")?;
    anyhow::ensure!(out.status.success(), "the registry simulation failed");
    let per_node: u64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    report.memory("registry", CLUSTER, idle + per_node / 1024, None);
    Ok(())
}

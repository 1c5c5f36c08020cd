//! The commands that talk to a running cluster through a seed (`members`, `services`, `call`,
//! `health`, `stats`, `watch`, `publish`, `subscribe`) and the short-lived nodes they use.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use mesh_node::stats::EndpointStats;
use mesh_node::{CallOptions, ContentType, MemberView, Node, PublishOptions, BUILTIN_SERVICE};
use mesh_protocol::NodeRecord;

use crate::args::{CredArgs, Inspect};
use crate::error::{usage, Failure};
use crate::keys::credentials;
use crate::run::{preset, shutdown_signal};

/// The local address the route to `peer` leaves from (a connected UDP socket sends nothing).
fn local_ip_toward(peer: SocketAddr) -> std::io::Result<std::net::IpAddr> {
    let any: std::net::IpAddr = if peer.is_ipv4() {
        [0, 0, 0, 0].into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let s = std::net::UdpSocket::bind(SocketAddr::new(any, 0))?;
    s.connect(peer)?;
    Ok(s.local_addr()?.ip())
}

/// A node for one command: not a member, just a client with the cluster's credentials.
async fn client(i: &Inspect) -> Result<Node, Failure> {
    client_for(&i.creds, i.join.first().copied()).await
}

async fn client_for(creds: &CredArgs, toward: Option<SocketAddr>) -> Result<Node, Failure> {
    let creds_ = credentials(creds)?;
    // Bind where the route to the cluster leaves this machine.
    let local_ip = toward
        .and_then(|seed| local_ip_toward(seed).ok())
        .unwrap_or_else(|| [127, 0, 0, 1].into());
    Node::builder()
        .name("mesh-node-cli")
        .bind(SocketAddr::new(local_ip, 0))
        .credentials(creds_)
        .membership(preset("local", &creds.cluster)?)
        .spawn()
        .await
        .map_err(Failure::from)
}

fn opts() -> CallOptions {
    CallOptions::default().timeout(Duration::from_secs(5))
}

/// Asks the first seed that answers.
async fn ask<T: serde::de::DeserializeOwned>(
    node: &Node,
    seeds: &[SocketAddr],
    endpoint: &str,
) -> Result<(SocketAddr, T), Failure> {
    let mut last = None;
    for seed in seeds {
        match node
            .call_node(*seed, BUILTIN_SERVICE, endpoint, &(), &opts())
            .await
        {
            Ok(v) => return Ok((*seed, v)),
            Err(e) => last = Some(anyhow::anyhow!("{seed}: {e}")),
        }
    }
    Err(Failure(
        1,
        last.unwrap_or_else(|| anyhow::anyhow!("no seed given")),
    ))
}

pub(crate) async fn members(i: &Inspect) -> Result<(), Failure> {
    let node = client(i).await?;
    let (_, members): (_, Vec<MemberView>) = ask(&node, &i.join, "Members").await?;
    if i.json {
        println!("{}", serde_json::to_string_pretty(&members)?);
    } else {
        println!("{:<24} {:<24} {:<8} GENERATION", "NAME", "ADDR", "STATE");
        for m in &members {
            println!(
                "{:<24} {:<24} {:<8} {}",
                m.name, m.addr, m.state, m.generation
            );
        }
    }
    node.shutdown().await;
    Ok(())
}

async fn registry(node: &Node, i: &Inspect) -> Result<Vec<NodeRecord>, Failure> {
    Ok(ask::<Vec<NodeRecord>>(node, &i.join, "Registry").await?.1)
}

pub(crate) async fn services(i: &Inspect, only: Option<&str>) -> Result<(), Failure> {
    let node = client(i).await?;
    let records = registry(&node, i).await?;
    #[derive(serde::Serialize)]
    struct Row<'a> {
        service: &'a str,
        version: &'a str,
        node: &'a str,
        addr: String,
        endpoints: Vec<&'a str>,
    }
    let rows: Vec<Row<'_>> = records
        .iter()
        .flat_map(|r| {
            r.services
                .iter()
                .filter(|s| only.is_none_or(|o| o == s.name))
                .map(move |s| Row {
                    service: &s.name,
                    version: &s.version,
                    node: &r.name,
                    addr: r.id.addr.to_string(),
                    endpoints: s.endpoints.iter().map(|e| e.name.as_str()).collect(),
                })
        })
        .collect();
    if i.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<20} {:<10} {:<20} {:<22} ENDPOINTS",
            "SERVICE", "VERSION", "NODE", "ADDR"
        );
        for r in &rows {
            println!(
                "{:<20} {:<10} {:<20} {:<22} {}",
                r.service,
                r.version,
                r.node,
                r.addr,
                r.endpoints.join(",")
            );
        }
    }
    node.shutdown().await;
    if let Some(name) = only {
        if rows.is_empty() {
            return Err(Failure(1, anyhow::anyhow!("no node serves {name}")));
        }
    }
    Ok(())
}

pub(crate) async fn call(
    i: &Inspect,
    service: &str,
    endpoint: &str,
    json: &str,
    timeout: Duration,
) -> Result<(), Failure> {
    let body: serde_json::Value = serde_json::from_str(json)
        .with_context(|| format!("the request is not valid JSON: {json}"))
        .map_err(usage)?;
    let node = client(i).await?;
    // Nodes of the service, from the seed's registry; tried in random order, like the client's
    // own selection, with retries only where safe (see Node::call_node).
    let records = registry(&node, i).await?;
    let mut candidates: Vec<(SocketAddr, bool)> = records
        .iter()
        .filter_map(|r| {
            let s = r.services.iter().find(|s| s.name == service)?;
            let e = s.endpoints.iter().find(|e| e.name == endpoint)?;
            Some((r.id.addr, e.idempotent))
        })
        .collect();
    if candidates.is_empty() {
        node.shutdown().await;
        return Err(Failure(
            1,
            anyhow::anyhow!("no node serves {service}.{endpoint}"),
        ));
    }
    shuffle(&mut candidates);
    let opts = CallOptions::default()
        .timeout(timeout)
        .content_type(ContentType::Json);
    let mut outcome = Err(anyhow::anyhow!("no attempt made"));
    for (addr, idempotent) in candidates {
        match node
            .call_node::<_, serde_json::Value>(addr, service, endpoint, &body, &opts)
            .await
        {
            Ok(reply) => {
                outcome = Ok(reply);
                break;
            }
            // Unreachable nodes never ran the call; others only if the endpoint allows it.
            Err(e) if e.code == mesh_node::code::UNAVAILABLE && (e.id == "mesh" || idempotent) => {
                outcome = Err(anyhow::anyhow!("{addr}: {e}"));
            }
            Err(e) => {
                outcome = Err(anyhow::anyhow!("{e}"));
                break;
            }
        }
    }
    node.shutdown().await;
    let reply = outcome?;
    println!("{}", serde_json::to_string_pretty(&reply)?);
    Ok(())
}

fn shuffle<T>(v: &mut [T]) {
    let mut seed = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
    let mut x = u64::from_le_bytes(seed) | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

pub(crate) async fn health(
    creds: &CredArgs,
    target: SocketAddr,
    json: bool,
) -> Result<(), Failure> {
    let node = client_for(creds, Some(target)).await?;
    let result: Result<mesh_node::Health, _> = node
        .call_node(target, BUILTIN_SERVICE, "Health", &(), &opts())
        .await;
    node.shutdown().await;
    let h = result.map_err(|e| Failure(1, anyhow::anyhow!("{target}: {e}")))?;
    if json {
        println!(
            "{}",
            serde_json::json!({"node": target.to_string(), "status": h.status})
        );
    } else {
        println!("{target}: {}", h.status);
    }
    Ok(())
}

pub(crate) async fn stats(i: &Inspect) -> Result<(), Failure> {
    let node = client(i).await?;
    let (_, members): (_, Vec<MemberView>) = ask(&node, &i.join, "Members").await?;
    let mut all: BTreeMap<String, BTreeMap<String, EndpointStats>> = BTreeMap::new();
    for m in members
        .iter()
        .filter(|m| m.state == "alive" || m.state == "suspect")
    {
        let Ok(addr) = m.addr.parse::<SocketAddr>() else {
            continue;
        };
        match node
            .call_node::<_, BTreeMap<String, EndpointStats>>(
                addr,
                BUILTIN_SERVICE,
                "Stats",
                &(),
                &opts(),
            )
            .await
        {
            Ok(s) => {
                all.insert(
                    format!("{} {}", m.name, m.addr),
                    s.into_iter()
                        .filter(|(k, _)| !k.starts_with("mesh."))
                        .collect(),
                );
            }
            Err(e) => eprintln!("{} ({}): {e}", m.name, m.addr),
        }
    }
    if i.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        println!(
            "{:<34} {:<24} {:>9} {:>7} {:>9} {:>9}",
            "NODE", "ENDPOINT", "REQUESTS", "ERRORS", "P50 µs", "P99 µs"
        );
        for (n, eps) in &all {
            for (e, s) in eps {
                println!(
                    "{:<34} {:<24} {:>9} {:>7} {:>9} {:>9}",
                    n, e, s.requests, s.errors, s.p50_us, s.p99_us
                );
            }
        }
    }
    node.shutdown().await;
    Ok(())
}

/// Joins the cluster for real (watch and subscribe need the registry and must be reachable).
async fn member(i: &Inspect, name: &str) -> Result<Node, Failure> {
    let creds = credentials(&i.creds)?;
    let ip = local_ip_toward(i.join[0])?;
    Ok(Node::builder()
        .name(name)
        .bind(SocketAddr::new(ip, 0))
        .seeds(i.join.clone())
        .credentials(creds)
        .membership(preset("local", &i.creds.cluster)?)
        .spawn()
        .await?)
}

pub(crate) async fn watch(i: &Inspect) -> Result<(), Failure> {
    let node = member(i, "mesh-node-watch").await?;
    let mut events = node.membership().watch();
    eprintln!(
        "watching the cluster through {} (Ctrl-C to stop)",
        i.join[0]
    );
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Ok(e) => {
                    let line = format!("{e:?}");
                    if i.json {
                        println!("{}", serde_json::json!({"event": line}));
                    } else {
                        println!("{line}");
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => eprintln!("(missed {n} events)"),
                Err(_) => break,
            },
            _ = shutdown_signal() => break,
        }
    }
    node.shutdown().await;
    Ok(())
}

pub(crate) async fn publish(
    i: &Inspect,
    topic: &str,
    json: &str,
    ack: bool,
) -> Result<(), Failure> {
    let body: serde_json::Value = serde_json::from_str(json)
        .with_context(|| format!("the message is not valid JSON: {json}"))
        .map_err(usage)?;
    // A publisher needs the registry's subscriptions: join, and wait (bounded) until it sees
    // every subscriber of the topic that the seed sees.
    let node = member(i, "mesh-node-publish").await?;
    let (_, seed_view): (_, Vec<NodeRecord>) = ask(&node, &i.join, "Registry").await?;
    let expected = seed_view
        .iter()
        .flat_map(|r| r.subscriptions.iter())
        .filter(|s| s.topic == topic)
        .count();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while node.membership().subscribers_of(topic).await?.len() < expected
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut opts = if ack {
        PublishOptions::acked()
    } else {
        PublishOptions::default()
    };
    opts.content_type = ContentType::Json;
    let report = node.publish(topic, &body, &opts).await;
    node.shutdown().await;
    let report = report?;
    println!(
        "{}",
        serde_json::json!({
            "delivered": report.delivered.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "failed": report.failed.iter().map(|(n, e)| serde_json::json!({"node": n.to_string(), "error": e.to_string()})).collect::<Vec<_>>(),
        })
    );
    if !report.failed.is_empty() {
        return Err(Failure(
            1,
            anyhow::anyhow!(
                "{} subscriber node(s) did not take the message",
                report.failed.len()
            ),
        ));
    }
    Ok(())
}

pub(crate) async fn subscribe(
    i: &Inspect,
    topic: &str,
    queue: Option<String>,
) -> Result<(), Failure> {
    let node = member(i, "mesh-node-subscribe").await?;
    let mut sub = match &queue {
        Some(g) => node.subscribe_queue::<serde_json::Value>(topic, g).await?,
        None => node.subscribe::<serde_json::Value>(topic).await?,
    };
    eprintln!("subscribed to {topic} (Ctrl-C to stop)");
    loop {
        tokio::select! {
            m = sub.recv() => match m {
                Some(Ok(m)) => println!("{}", serde_json::json!({
                    "topic": m.topic, "publisher": m.publisher.to_string(), "metadata": m.metadata, "body": m.body,
                })),
                Some(Err(e)) => eprintln!("undecodable message: {e}"),
                None => break,
            },
            _ = shutdown_signal() => break,
        }
    }
    if sub.dropped() > 0 {
        eprintln!("{} messages dropped (printing fell behind)", sub.dropped());
    }
    drop(sub);
    node.shutdown().await;
    Ok(())
}

//! mesh against the physical limit of its own transport, measured in one run on loopback.
//!
//! ```sh
//! cargo run --release -p mesh-examples --bin mesh-bench            # the table
//! cargo run --release -p mesh-examples --bin mesh-bench -- --json  # one JSON object per line
//! ```
//!
//! Flags: `--seconds S` per measured run (default 2), `--only NAME[,NAME]` to run some of
//! `unary`, `stream`, `pubsub`, `memory`.
//!
//! Every figure is measured beside its baseline in the same run, and the ratio is mesh over
//! the baseline. See `docs/BENCHMARKS.md` for the method and the runtime set-up.

mod measure;
mod memory;
mod nats;
mod oneway;
mod raw;
mod report;
mod wire;

use std::time::{Duration, Instant};

use bytes::Bytes;
use mesh_examples::Blob;
use mesh_membership::MembershipConfig;
use mesh_node::{
    typed, CallOptions, Credentials, Inbound, Node, Outbound, PublishOptions, Request, Service,
};

use measure::{closed_loop, Figures};
use oneway::{slowest, stamped, Tally, BLOB_LEN};
use report::{Report, Row};

struct Settings {
    warmup: Duration,
    run: Duration,
    /// `--size`: only this payload size.
    size: Option<usize>,
    /// `--concurrency`: only this concurrency.
    concurrency: Option<usize>,
    /// `--skip-baseline`: for profiling mesh alone (ratios are then meaningless).
    skip_baseline: bool,
}

impl Settings {
    fn sizes(&self, all: &[usize]) -> Vec<usize> {
        all.iter()
            .copied()
            .filter(|s| self.size.is_none_or(|o| o == *s))
            .collect()
    }

    fn concurrencies(&self, all: &[usize]) -> Vec<usize> {
        all.iter()
            .copied()
            .filter(|c| self.concurrency.is_none_or(|o| o == *c))
            .collect()
    }
}

fn node(creds: &Credentials, name: &str) -> mesh_node::NodeBuilder {
    Node::builder()
        .name(name)
        .credentials(creds.clone())
        .membership(MembershipConfig::local())
}

/// Waits (bounded) until `client` sees a node of `service`.
async fn await_service(client: &Node, service: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.membership().nodes_of(service).await?.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "{service} not visible");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Unary RPC: raw quinn echo against `Echo.Echo` through the whole stack.
async fn unary(s: &Settings, report: &Report) -> anyhow::Result<()> {
    let creds = Credentials::key("bench")?;
    let raw_server = raw::make_endpoint(&creds)?;
    let raw_client = raw::make_endpoint(&creds)?;
    raw::serve_echo(raw_server.clone());
    let raw_conn = raw::connect(&raw_client, &raw_server).await?;

    let server = node(&creds, "server")
        .service(Service::new("Echo").idempotent_endpoint(
            "Echo",
            typed(|_req, body: mesh_examples::Blob| async move { Ok(body) }),
        ))
        .spawn()
        .await?;
    let client = node(&creds, "client")
        .seeds(vec![server.addr()])
        .spawn()
        .await?;
    await_service(&client, "Echo").await?;

    for size in s.sizes(&[64, 16 * 1024]) {
        for concurrency in s.concurrencies(&[1, 64]) {
            let raw_payload = Bytes::from(vec![7u8; size]);
            let base = if s.skip_baseline {
                Figures {
                    per_s: f64::NAN,
                    p50_us: 0,
                    p99_us: 0,
                }
            } else {
                let conn = raw_conn.clone();
                closed_loop(concurrency, s.warmup, s.run, move || {
                    let (conn, p) = (conn.clone(), raw_payload.clone());
                    async move { raw::echo(&conn, &p).await }
                })
                .await?
            };
            // The body is a MessagePack `bin` of `size` bytes: 2 or 3 bytes longer than the
            // raw payload, which is the codec's honest cost.
            let payload = mesh_examples::Blob(vec![7u8; size]);
            let mesh = {
                let client = client.clone();
                closed_loop(concurrency, s.warmup, s.run, move || {
                    let (client, payload) = (client.clone(), payload.clone());
                    async move {
                        let echo: mesh_examples::Blob = client
                            .call("Echo", "Echo", &payload, &CallOptions::default())
                            .await?;
                        anyhow::ensure!(echo.0.len() == payload.0.len(), "short echo");
                        Ok(())
                    }
                })
                .await?
            };
            for (bench, f) in [("baseline", base), ("unary", mesh)] {
                report.row(&Row {
                    bench,
                    size,
                    concurrency,
                    subscribers: None,
                    ack: None,
                    figures: f,
                    ratio: f.per_s / base.per_s,
                    p50_ratio: f.p50_us as f64 / base.p50_us.max(1) as f64,
                });
            }
        }
    }
    client.shutdown().await;
    server.shutdown().await;
    raw_client.close(0u32.into(), b"done");
    raw_server.close(0u32.into(), b"done");
    Ok(())
}

/// Streaming RPC: one server stream of 128-byte messages, against the raw one-way stream.
async fn stream(s: &Settings, report: &Report) -> anyhow::Result<()> {
    let creds = Credentials::key("bench")?;
    let base = raw::oneway(&creds, 1, s.warmup, s.run, false).await?;
    let batched = raw::oneway(&creds, 1, s.warmup, s.run, true).await?;
    let server = node(&creds, "streamer")
        .service(Service::new("Flood").stream_endpoint(
            "Out",
            |_req: Request, _inbound: Inbound, out: Outbound| async move {
                // Until the caller goes away.
                loop {
                    out.send(&Blob(stamped(BLOB_LEN))).await?;
                }
            },
        ))
        .spawn()
        .await?;
    let client = node(&creds, "client")
        .seeds(vec![server.addr()])
        .spawn()
        .await?;
    await_service(&client, "Flood").await?;
    let start = Instant::now() + s.warmup;
    let stop = start + s.run;
    let mut call = client
        .stream(
            "Flood",
            "Out",
            &CallOptions::default().timeout(Duration::from_secs(60)),
        )
        .await?;
    call.close_send();
    let mut tally = Tally::new(start, stop);
    // The handler sends until the caller goes away; stamps tell the window's messages apart.
    while Instant::now() < stop && !tally.expired() {
        match tokio::time::timeout_at(tally.wait().into(), call.recv::<Blob>()).await {
            Ok(Some(m)) => tally.see(&m?.0, 0),
            Ok(None) => anyhow::bail!("the stream ended early"),
            Err(_) => break,
        }
    }
    drop(call);
    let mesh = slowest(vec![tally]);
    for (bench, f) in [("baseline", base), ("batched", batched), ("stream", mesh)] {
        report.row(&Row {
            bench,
            size: oneway::MESSAGE_LEN,
            concurrency: 1,
            subscribers: None,
            ack: None,
            figures: f,
            ratio: f.per_s / base.per_s,
            p50_ratio: f.p50_us as f64 / base.p50_us.max(1) as f64,
        });
    }
    client.shutdown().await;
    server.shutdown().await;
    Ok(())
}

/// Publishers at once in the pub/sub bench (an acknowledged publish waits a round trip).
const PUBLISHERS: usize = 32;

/// Pub/sub of 128-byte messages to 1 and 4 subscriber nodes, fire-and-forget and acknowledged,
/// against the raw one-way streams to as many receivers, and a NATS server if one is installed.
async fn pubsub(s: &Settings, report: &Report) -> anyhow::Result<()> {
    let creds = Credentials::key("bench")?;
    let publisher = node(&creds, "publisher").spawn().await?;
    let mut subscribers = Vec::new();
    for i in 0..4 {
        subscribers.push(
            node(&creds, &format!("sub{i}"))
                .seeds(vec![publisher.addr()])
                .subscription_queue(65_536)
                .spawn()
                .await?,
        );
    }
    for n in [1usize, 4] {
        let base = raw::oneway(&creds, n, s.warmup, s.run, false).await?;
        let row = |bench, ack, f: Figures| Row {
            bench,
            size: oneway::MESSAGE_LEN,
            concurrency: PUBLISHERS,
            subscribers: Some(n),
            ack,
            figures: f,
            ratio: f.per_s / base.per_s,
            p50_ratio: f.p50_us as f64 / base.p50_us.max(1) as f64,
        };
        report.row(&Row {
            concurrency: 1,
            ..row("baseline", None, base)
        });
        for ack in [false, true] {
            let topic = format!("bench-{n}-{ack}");
            let f = publish_run(s, &publisher, &subscribers[..n], &topic, ack).await?;
            report.row(&row("pubsub", Some(ack), f));
        }
        match nats::run(n, s.warmup, s.run).await {
            Ok(Some(f)) => report.row(&Row {
                concurrency: 1,
                ..row("nats", None, f)
            }),
            Ok(None) => {
                if n == 1 {
                    eprintln!("nats-server not found: the NATS comparison is skipped");
                }
            }
            Err(e) => eprintln!("NATS comparison failed: {e:#}"),
        }
    }
    for s in subscribers {
        s.shutdown().await;
    }
    publisher.shutdown().await;
    Ok(())
}

async fn publish_run(
    s: &Settings,
    publisher: &Node,
    subscribers: &[Node],
    topic: &str,
    ack: bool,
) -> anyhow::Result<Figures> {
    let mut receivers = Vec::new();
    let start = Instant::now() + s.warmup + Duration::from_millis(200);
    let stop = start + s.run;
    for node in subscribers {
        let mut sub = node.subscribe::<Blob>(topic).await?;
        receivers.push(tokio::spawn(async move {
            let mut tally = Tally::new(start, stop);
            // The body is a MessagePack `bin 8`: the stamp starts after its 2-byte header.
            while !tally.expired() {
                match tokio::time::timeout_at(tally.wait().into(), sub.recv_raw()).await {
                    Ok(Some(d)) => tally.see(&d.body, 2),
                    Ok(None) | Err(_) => break,
                }
            }
            (tally, sub.dropped())
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while publisher
        .membership()
        .directory()
        .subscribers_of(topic)
        .len()
        < subscribers.len()
    {
        anyhow::ensure!(Instant::now() < deadline, "subscriptions not visible");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let opts = if ack {
        PublishOptions::acked()
    } else {
        PublishOptions::default()
    };
    let mut pubs = Vec::new();
    for _ in 0..PUBLISHERS {
        let (p, topic, opts) = (publisher.clone(), topic.to_owned(), opts.clone());
        pubs.push(tokio::spawn(async move {
            while Instant::now() < stop {
                p.publish(&topic, &Blob(stamped(BLOB_LEN)), &opts).await?;
            }
            anyhow::Ok(())
        }));
    }
    for p in pubs {
        p.await??;
    }
    let mut tallies = Vec::new();
    let mut dropped = 0;
    for r in receivers {
        let (t, d) = r.await?;
        tallies.push(t);
        dropped += d;
    }
    if dropped > 0 {
        eprintln!("pubsub {topic}: {dropped} messages dropped by full subscription queues");
    }
    Ok(slowest(tallies))
}

fn main() -> anyhow::Result<()> {
    let args = mesh_examples::Args::parse_with_switches(
        &["seconds", "only", "size", "concurrency", "child"],
        &["json", "skip-baseline"],
    )?;
    if args.get("child") == Some("registry") {
        return memory::registry_child();
    }
    if args.get("child").is_some() {
        // The node measured by the memory bench, set up as `mesh-node run` sets up its node.
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(memory::child(args.join));
    }
    // Every bench, its baseline included, runs on one current-thread runtime: client and server
    // share one core, so the figures compare the CPU work per call or message of mesh and of
    // raw quinn, without cross-thread wake-ups (see docs/BENCHMARKS.md).
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(benches(args))
}

async fn benches(args: mesh_examples::Args) -> anyhow::Result<()> {
    let seconds: f64 = args.get("seconds").unwrap_or("2").parse()?;
    let only: Vec<String> = args
        .get("only")
        .map(|o| o.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let wants = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let settings = Settings {
        warmup: Duration::from_millis(200),
        run: Duration::from_secs_f64(seconds),
        size: args.get("size").map(str::parse).transpose()?,
        concurrency: args.get("concurrency").map(str::parse).transpose()?,
        skip_baseline: args.get("skip-baseline").is_some(),
    };
    let report = Report {
        json: args.get("json").is_some(),
    };
    report.header();
    if wants("unary") {
        unary(&settings, &report).await?;
    }
    if wants("stream") {
        stream(&settings, &report).await?;
    }
    if wants("pubsub") {
        pubsub(&settings, &report).await?;
    }
    if wants("memory") {
        memory::run(&report).await?;
    }
    Ok(())
}

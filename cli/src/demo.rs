//! `mesh-node demo`: a cluster in one process, to see what mesh does.

use std::time::{Duration, Instant};

use mesh_membership::{Event, MembershipConfig};
use mesh_node::{typed, CallOptions, Credentials, Node, Service};

async fn greeter(
    name: &str,
    key: &Credentials,
    seeds: Vec<std::net::SocketAddr>,
) -> anyhow::Result<Node> {
    let me = name.to_owned();
    let svc = Service::new("Greeter")
        .version("1.0.0")
        .idempotent_endpoint(
            "Hello",
            typed(move |_req, r: serde_json::Value| {
                let me = me.clone();
                async move {
                    let who = r
                        .get("name")
                        .and_then(|n| n.as_str())
                        .unwrap_or("stranger")
                        .to_owned();
                    Ok(serde_json::json!({ "greeting": format!("Hello {who}"), "node": me }))
                }
            }),
        );
    Ok(Node::builder()
        .name(name)
        .credentials(key.clone())
        .membership(MembershipConfig::local())
        .seeds(seeds)
        .service(svc)
        .spawn()
        .await?)
}

async fn spread(
    client: &Node,
    calls: usize,
) -> anyhow::Result<(std::collections::BTreeMap<String, usize>, usize)> {
    let mut by_node = std::collections::BTreeMap::new();
    let mut failures = 0;
    for i in 0..calls {
        let req = serde_json::json!({ "name": format!("visitor {i}") });
        match client
            .call::<_, serde_json::Value>("Greeter", "Hello", &req, &CallOptions::default())
            .await
        {
            Ok(r) => {
                *by_node
                    .entry(r["node"].as_str().unwrap_or("?").to_owned())
                    .or_insert(0) += 1
            }
            Err(e) => {
                failures += 1;
                println!("  call failed: {e}");
            }
        }
    }
    Ok((by_node, failures))
}

pub(crate) async fn run() -> anyhow::Result<()> {
    // A throwaway key: these nodes only talk to each other.
    let key = Credentials::key(crate::keys::new_key())?;
    println!("mesh demo: four nodes in this process, on loopback, with a fresh cluster key\n");
    let seed = greeter("greeter-1", &key, vec![]).await?;
    let g2 = greeter("greeter-2", &key, vec![seed.addr()]).await?;
    let g3 = greeter("greeter-3", &key, vec![seed.addr()]).await?;
    let client = Node::builder()
        .name("client")
        .credentials(key.clone())
        .membership(MembershipConfig::local())
        .seeds(vec![seed.addr()])
        .spawn()
        .await?;
    for n in [&seed, &g2, &g3] {
        println!("  {} serves Greeter.Hello at {}", n.name(), n.addr());
    }
    println!(
        "  client at {} joins through {}\n",
        client.addr(),
        seed.addr()
    );

    let started = Instant::now();
    while client.membership().nodes_of("Greeter").await?.len() < 3 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(15),
            "the cluster did not form"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "1. gossip: the client found all three greeters in {:?}, with no registry server",
        started.elapsed()
    );

    let (by_node, _) = spread(&client, 60).await?;
    println!("2. balancing: 60 calls to Greeter.Hello by name spread as {by_node:?}");

    let mut sticky = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let g: serde_json::Value = client
            .call(
                "Greeter",
                "Hello",
                &serde_json::json!({"name": "John"}),
                &CallOptions::default().routing_key("john"),
            )
            .await?;
        sticky.insert(g["node"].as_str().unwrap_or("?").to_owned());
    }
    println!("   10 calls with routing key \"john\" went to {sticky:?}");

    println!("3. crash: greeter-2 dies without a word");
    let mut events = client.membership().watch();
    let crashed = Instant::now();
    let victim = g2.addr();
    g2.kill();
    let during = tokio::spawn({
        let client = client.clone();
        async move { spread(&client, 60).await }
    });
    let detected = loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Ok(Event::MemberDown { id })) if id.addr == victim => break Some(crashed.elapsed()),
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
            _ => break None,
        }
    };
    match detected {
        Some(t) => {
            println!("   SWIM declared it down after {t:?}; its service left the registry at once")
        }
        None => println!("   (not detected within 10 s)"),
    }
    let (by_node, failures) = during.await??;
    println!(
        "   60 calls made meanwhile: {by_node:?}, {failures} failed, {} retried on another node",
        client.retries()
    );
    println!(
        "   (Greeter.Hello is idempotent: a call that may have reached the dead node is retried)"
    );

    println!("4. graceful leave: greeter-3 shuts down");
    let left = Instant::now();
    let leaving = tokio::spawn(async move { g3.shutdown().await });
    while client.membership().nodes_of("Greeter").await?.len() > 1
        && left.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "   the client stopped routing to it after {:?} (no failure detection needed)",
        left.elapsed()
    );
    leaving.await?;

    client.shutdown().await;
    seed.shutdown().await;
    println!("\ndone. Next: `mesh-node run` on several machines; see the README.");
    Ok(())
}

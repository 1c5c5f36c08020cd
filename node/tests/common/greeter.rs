//! The Greeter service and the cluster fixtures of the RPC tests (`rpc.rs`, `selection.rs`,
//! `untrusted.rs`): three greeters and a client, on loopback QUIC with the local preset.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mesh_membership::MembershipConfig;
use mesh_node::{typed, Credentials, Node, RpcError, Service};
use serde::{Deserialize, Serialize};

use super::eventually;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) name: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Greeting {
    pub(crate) greeting: String,
    pub(crate) node: String,
}

/// Executions of the non-idempotent `Greeter.Forward`, across all nodes of a test.
pub(crate) static FORWARD_RUNS: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn greeter(node_name: &str) -> Service {
    let me = node_name.to_owned();
    let me2 = me.clone();
    Service::new("Greeter")
        .version("1.0.0")
        .idempotent_endpoint(
            "Hello",
            typed(move |_req, h: Hello| {
                let node = me.clone();
                async move {
                    Ok(Greeting {
                        greeting: format!("Hello {}", h.name),
                        node,
                    })
                }
            }),
        )
        .endpoint(
            "Fail",
            typed(|_req, _: ()| async move {
                Err::<(), _>(RpcError::conflict("Greeter", "business error"))
            }),
        )
        .endpoint(
            "Panic",
            typed(|_req, _: ()| async move {
                if true {
                    panic!("handler bug");
                }
                Ok(())
            }),
        )
        .endpoint(
            "Forward",
            typed(|_req, _: ()| async move {
                FORWARD_RUNS.fetch_add(1, Ordering::SeqCst);
                // As if a downstream call had been refused and passed on with `?`.
                Err::<(), _>(RpcError::unavailable("mesh", "downstream refused"))
            }),
        )
        .endpoint(
            "Slow",
            typed(move |_req, ms: u64| {
                let node = me2.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(node)
                }
            }),
        )
}

pub(crate) async fn start(
    name: &str,
    key: &str,
    seeds: &[SocketAddr],
    services: Vec<Service>,
) -> Node {
    let mut b = Node::builder()
        .name(name)
        .credentials(Credentials::key(key).unwrap())
        .membership(MembershipConfig::local())
        .seeds(seeds.to_vec())
        .drain_timeout(Duration::from_secs(3));
    for s in services {
        b = b.service(s);
    }
    b.spawn().await.unwrap()
}

pub(crate) async fn wait_for_nodes(client: &Node, service: &str, n: usize) {
    eventually(Duration::from_secs(20), "service nodes visible", || async {
        client.membership().nodes_of(service).await.unwrap().len() == n
    })
    .await;
}

/// Three greeters and a client that serves nothing.
pub(crate) async fn cluster(key: &str) -> (Vec<Node>, Node) {
    let seed = start("g0", key, &[], vec![greeter("g0")]).await;
    let mut greeters = vec![seed.clone()];
    for i in 1..3 {
        let name = format!("g{i}");
        greeters.push(start(&name, key, &[seed.addr()], vec![greeter(&name)]).await);
    }
    let client = start("client", key, &[seed.addr()], vec![]).await;
    wait_for_nodes(&client, "Greeter", 3).await;
    (greeters, client)
}

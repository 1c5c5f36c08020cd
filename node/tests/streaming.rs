//! Streaming calls on loopback QUIC: server, client and bidirectional streams, errors, deadlines,
//! backpressure and a caller that goes away. Real clock; every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh_membership::MembershipConfig;
use mesh_node::{
    code, CallOptions, Credentials, Inbound, Node, Outbound, Request, RpcError, Service,
};

/// Sets its flag when dropped: a handler holding one shows when it stopped, even if cancelled.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

struct Fixture {
    server: Node,
    client: Node,
    sent: Arc<AtomicUsize>,
    caller_gone: Arc<AtomicBool>,
}

async fn fixture() -> Fixture {
    let sent = Arc::new(AtomicUsize::new(0));
    let caller_gone = Arc::new(AtomicBool::new(false));
    let (sent2, gone2) = (sent.clone(), caller_gone.clone());
    let svc = Service::new("Streams")
        // Server stream: one number in, 1..=n out.
        .stream_endpoint(
            "Count",
            |_req: Request, mut inb: Inbound, out: Outbound| async move {
                let n: u32 = inb
                    .next()
                    .await
                    .ok_or_else(|| RpcError::bad_request("Streams", "no n"))??;
                for i in 1..=n {
                    out.send(&i).await?;
                }
                Ok(())
            },
        )
        // Client stream: numbers in, their sum out at the end.
        .stream_endpoint(
            "Sum",
            |_req: Request, mut inb: Inbound, out: Outbound| async move {
                let mut sum = 0u64;
                while let Some(x) = inb.next::<u64>().await {
                    sum += x?;
                }
                out.send(&sum).await
            },
        )
        // Bidirectional: every message echoed upper-cased as it arrives.
        .stream_endpoint(
            "Shout",
            |_req: Request, mut inb: Inbound, out: Outbound| async move {
                while let Some(s) = inb.next::<String>().await {
                    out.send(&s?.to_uppercase()).await?;
                }
                Ok(())
            },
        )
        .stream_endpoint(
            "FailAfterTwo",
            |_req: Request, _inb: Inbound, out: Outbound| async move {
                out.send(&1u8).await?;
                out.send(&2u8).await?;
                Err(RpcError::conflict("Streams", "third time unlucky"))
            },
        )
        .stream_endpoint(
            "Forever",
            |_req: Request, _inb: Inbound, _out: Outbound| async move {
                std::future::pending::<()>().await;
                Ok(())
            },
        )
        // Sends 1 KiB messages as fast as the caller takes them, counting; notes when it stops
        // running, whether it returns or is cancelled.
        .stream_endpoint(
            "Firehose",
            move |_req: Request, _inb: Inbound, out: Outbound| {
                let (sent, gone) = (sent2.clone(), gone2.clone());
                async move {
                    let _stopped = SetOnDrop(gone);
                    let chunk = vec![0u8; 1024];
                    loop {
                        out.send(&chunk).await?;
                        sent.fetch_add(1, Ordering::SeqCst);
                    }
                }
            },
        );
    let node = |name: &str| {
        Node::builder()
            .name(name)
            .credentials(Credentials::key("streams").unwrap())
            .membership(MembershipConfig::local())
    };
    let server = node("server").service(svc).spawn().await.unwrap();
    let client = node("client")
        .seeds(vec![server.addr()])
        .spawn()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while client
        .membership()
        .nodes_of("Streams")
        .await
        .unwrap()
        .is_empty()
    {
        assert!(tokio::time::Instant::now() < deadline, "server not visible");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Fixture {
        server,
        client,
        sent,
        caller_gone,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_client_and_bidirectional_streams() {
    let f = fixture().await;
    let opts = CallOptions::default();

    let mut s = f.client.stream("Streams", "Count", &opts).await.unwrap();
    s.send(&5u32).await.unwrap();
    s.close_send();
    let mut got = Vec::new();
    while let Some(x) = s.recv::<u32>().await {
        got.push(x.unwrap());
    }
    assert_eq!(got, vec![1, 2, 3, 4, 5]);

    let mut s = f.client.stream("Streams", "Sum", &opts).await.unwrap();
    for x in 1..=100u64 {
        s.send(&x).await.unwrap();
    }
    s.close_send();
    assert_eq!(s.recv::<u64>().await.unwrap().unwrap(), 5050);
    assert!(s.recv::<u64>().await.is_none());

    // Interleaved: each reply arrives before the next message is sent.
    let mut s = f.client.stream("Streams", "Shout", &opts).await.unwrap();
    for word in ["hello", "mesh", "streams"] {
        s.send(&word).await.unwrap();
        assert_eq!(
            s.recv::<String>().await.unwrap().unwrap(),
            word.to_uppercase()
        );
    }
    s.close_send();
    assert!(s.recv::<String>().await.is_none());

    // A call is recorded once the caller has acknowledged its end: wait for it (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f.server.stats().contains_key("Streams.Shout") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stats never recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = f.server.stats();
    assert_eq!(stats["Streams.Count"].requests, 1);
    assert_eq!(stats["Streams.Sum"].requests, 1);
    assert_eq!(stats["Streams.Shout"].errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_deadlines_end_the_stream() {
    let f = fixture().await;
    let mut s = f
        .client
        .stream("Streams", "FailAfterTwo", &CallOptions::default())
        .await
        .unwrap();
    s.close_send();
    assert_eq!(s.recv::<u8>().await.unwrap().unwrap(), 1);
    assert_eq!(s.recv::<u8>().await.unwrap().unwrap(), 2);
    let e = s.recv::<u8>().await.unwrap().unwrap_err();
    assert_eq!(
        (e.code, e.detail.as_str()),
        (code::CONFLICT, "third time unlucky")
    );
    assert!(s.recv::<u8>().await.is_none());

    let started = std::time::Instant::now();
    let opts = CallOptions::default().timeout(Duration::from_millis(300));
    let mut s = f.client.stream("Streams", "Forever", &opts).await.unwrap();
    let e = s.recv::<u8>().await.unwrap().unwrap_err();
    assert_eq!(e.code, code::TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(2));

    let e = f
        .client
        .stream("Streams", "Nope", &CallOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, code::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_holds_the_sender_back_and_a_gone_caller_stops_it() {
    let f = fixture().await;
    let opts = CallOptions::default().timeout(Duration::from_secs(30));
    let mut s = f.client.stream("Streams", "Firehose", &opts).await.unwrap();
    for _ in 0..10 {
        s.recv::<Vec<u8>>().await.unwrap().unwrap();
    }
    // Stop reading: the handler can run ahead only by the queue and QUIC's flow-control window.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ahead = f.sent.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = f.sent.load(Ordering::SeqCst);
    println!("messages sent while the reader paused: {ahead} then {later}");
    assert_eq!(ahead, later, "the sender is blocked, not buffering");
    assert!(ahead < 20_000, "{ahead} messages of 1 KiB in flight");

    // The caller goes away: the handler is cancelled.
    drop(s);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f.caller_gone.load(Ordering::SeqCst) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "handler never noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

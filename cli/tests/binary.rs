//! The mesh-node binary end to end, as separate processes on loopback: three nodes join through
//! a seed, `members` lists them, `call` reaches a greeter example process, a killed process shows
//! as down within the configured bound, the HTTP endpoints answer (and /metrics parses as
//! Prometheus text), and bad input gets a clear message and a non-zero exit.
//!
//! Every process gets a fresh HOME, so the default key file is created by the first node and
//! shared through it. Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mesh_membership::MembershipConfig;

const BIN: &str = env!("CARGO_BIN_EXE_mesh-node");

struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn line_containing(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(what) => return l,
                Ok(_) => {}
                Err(e) => panic!("no line containing {what:?}: {e}"),
            }
        }
    }
}

fn spawn(program: &Path, args: &[&str], home: &Path, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("MESH_CLUSTER_KEY")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Proc { child, lines }
}

/// Runs `mesh-node ARGS` to completion (bounded).
fn run(args: &[&str], home: &Path) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("MESH_CLUSTER_KEY")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("mesh-node {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Checks Prometheus text exposition format 0.0.4 line by line; returns the samples.
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts.next().unwrap_or("");
            assert!(matches!(kind, "HELP" | "TYPE"), "bad comment: {line}");
            assert!(name_ok(name), "bad metric name in: {line}");
            if kind == "TYPE" {
                let t = parts.next().unwrap_or("");
                assert!(
                    matches!(t, "counter" | "gauge" | "histogram" | "summary" | "untyped"),
                    "bad type: {line}"
                );
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "bad sample name: {line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "labels: {line}"
                );
                for pair in labels[1..labels.len() - 1].split("\",") {
                    let (k, v) = pair.split_once("=\"").expect("label k=\"v\"");
                    assert!(name_ok(k), "label name: {line}");
                    assert!(!v.trim_end_matches('"').contains('\n'));
                }
            }
        }
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in: {line}")),
        };
        samples.push((series.to_owned(), v));
    }
    samples
}

fn greeter_bin() -> PathBuf {
    let p = Path::new(BIN).with_file_name("greeter");
    assert!(
        p.exists(),
        "{} is missing: build the examples too (`cargo test --workspace` does)",
        p.display()
    );
    p
}

#[test]
fn three_nodes_a_greeter_and_the_command_line() {
    let home = std::env::temp_dir().join(format!("mesh-binary-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    let (p1, p2, p3, ph) = (free_port(), free_port(), free_port(), free_port());
    let seed = format!("127.0.0.1:{p1}");
    let http_addr: SocketAddr = format!("127.0.0.1:{ph}").parse().unwrap();

    let n1 = spawn(
        Path::new(BIN),
        &[
            "run",
            "--name",
            "n1",
            "--bind",
            &seed,
            "--preset",
            "local",
            "--http",
            &http_addr.to_string(),
        ],
        &home,
        &[],
    );
    n1.line_containing("running at");
    n1.line_containing("http listening at");
    // The first node created the default key file; the others find it.
    let key_file = home.join(".config/mesh/cluster.key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(key.trim().len(), 64);
    let n2 = spawn(
        Path::new(BIN),
        &[
            "run",
            "--name",
            "n2",
            "--bind",
            &format!("127.0.0.1:{p2}"),
            "--join",
            &seed,
            "--preset",
            "local",
        ],
        &home,
        &[],
    );
    let mut n3 = spawn(
        Path::new(BIN),
        // Environment variables work as flags do.
        &["run", "--preset", "local"],
        &home,
        &[
            ("MESH_NAME", "n3"),
            ("MESH_BIND", &format!("127.0.0.1:{p3}")),
            ("MESH_JOIN", &seed),
        ],
    );
    n2.line_containing("running at");
    n3.line_containing("running at");
    let greeter = spawn(
        &greeter_bin(),
        &["--bind", "127.0.0.1:0", "--join", &seed],
        &home,
        &[("MESH_CLUSTER_KEY", key.trim())],
    );
    greeter.line_containing("serving Greeter.Hello");

    // members --json lists the three nodes (and the greeter), alive.
    let alive = |out: &Output| -> Vec<(String, String)> {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|m| {
                        (
                            m["name"].as_str().unwrap_or("").to_owned(),
                            m["state"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(&["members", "--join", &seed, "--json"], &home);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = alive(&out);
        let names: Vec<&str> = m
            .iter()
            .filter(|(_, s)| s == "alive")
            .map(|(n, _)| n.as_str())
            .collect();
        if ["n1", "n2", "n3", "greeter"]
            .iter()
            .all(|n| names.contains(n))
        {
            break;
        }
        assert!(Instant::now() < deadline, "members never listed all: {m:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The table form too.
    let out = run(&["members", "--join", &seed], &home);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("NAME") && table.contains("n2"), "{table}");

    // call reaches the greeter process, through any node.
    let out = run(
        &[
            "call",
            "Greeter",
            "Hello",
            r#"{"name":"John"}"#,
            "--join",
            &format!("127.0.0.1:{p2}"),
        ],
        &home,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["greeting"], "Hello John");

    // HTTP: health, members, services, metrics, the gateway.
    let (status, body) = http(http_addr, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"],
        "ok"
    );
    let (status, body) = http(http_addr, "GET /members HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    assert!(
        serde_json::from_str::<serde_json::Value>(&body)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
            >= 4
    );
    let (status, body) = http(http_addr, "GET /services HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    assert!(body.contains("Greeter"), "{body}");
    let call = r#"{"name":"HTTP"}"#;
    let (status, body) = http(
        http_addr,
        &format!(
            "POST /call/Greeter/Hello HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{call}",
            call.len()
        ),
    );
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"greeting":"Hello HTTP"}"#)
    );
    let (status, body) = http(http_addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    let samples = parse_prometheus(&body);
    let get = |series: &str| samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v);
    assert_eq!(get("mesh_members{state=\"alive\"}"), Some(4.0), "{body}");
    assert!(get("mesh_client_retries_total").is_some());
    assert!(get("mesh_gossip_bytes_total{direction=\"in\"}").unwrap() > 0.0);
    assert!(samples
        .iter()
        .any(|(s, _)| s.starts_with("mesh_call_duration_seconds_bucket")));
    let (status, _) = http(http_addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);

    // Bad input: clear message, non-zero exit.
    let (status, body) = http(
        http_addr,
        "POST /call/Greeter/Hello HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{nope",
    );
    assert_eq!(status, 400, "{body}");
    let (status, _) = http(http_addr, "BREW /coffee HTCPCP/1.0\r\n\r\n");
    assert!(status == 400 || status == 404, "{status}");
    let out = run(
        &["call", "Greeter", "Hello", "{not json", "--join", &seed],
        &home,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));
    let out = run(&["run", "--bind", "nonsense"], &home);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bind"));
    let out = run(&["members"], &home);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--join"));
    let out = run(&["call", "Nobody", "Home", "{}", "--join", &seed], &home);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node serves"));

    // subscribe prints each message as one JSON line; publish --ack reports who took it; watch
    // streams registry changes.
    let watcher = spawn(Path::new(BIN), &["watch", "--join", &seed], &home, &[]);
    let subscriber = spawn(
        Path::new(BIN),
        &["subscribe", "orders", "--join", &seed],
        &home,
        &[],
    );
    // The watcher sees the subscriber join (as a member with a subscription in its record).
    watcher.line_containing("MemberUp");
    let deadline = Instant::now() + Duration::from_secs(30);
    let published = loop {
        let out = run(
            &["publish", "orders", r#"{"id":7}"#, "--join", &seed, "--ack"],
            &home,
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if out.status.success() && report["delivered"].as_array().is_some_and(|d| d.len() == 1) {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "publish never reached the subscriber: {report}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(published["failed"].as_array().unwrap().is_empty());
    let line = subscriber.line_containing("\"topic\"");
    let msg: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (msg["topic"].as_str(), &msg["body"]),
        (Some("orders"), &serde_json::json!({"id": 7}))
    );
    drop((watcher, subscriber));

    // A killed process shows as down within the bound the preset implies (plus the time one
    // `members` process takes to start and ask).
    let bound = MembershipConfig::local().detection_bound(4) + Duration::from_secs(2);
    n3.child.kill().unwrap();
    let killed = Instant::now();
    loop {
        let m = alive(&run(&["members", "--join", &seed, "--json"], &home));
        if m.iter().any(|(n, s)| n == "n3" && s == "down") {
            println!("n3 down after {:?} (bound {bound:?})", killed.elapsed());
            break;
        }
        assert!(
            killed.elapsed() < bound,
            "n3 not down after {:?}: {m:?}",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop((n1, n2, greeter));
    let _ = std::fs::remove_dir_all(&home);
}

//! The examples as separate processes on loopback: three greeters and a client; calls balance,
//! and a greeter killed mid-run costs the client no failed call. Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const KEY: &str = "processes-test-key";

/// A child process killed when dropped, with its stdout lines on a channel.
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

fn spawn(bin: &str, args: &[&str]) -> Proc {
    let mut child = Command::new(bin)
        .args(args)
        .env("MESH_CLUSTER_KEY", KEY)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
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

fn greeter(join: Option<&str>) -> (Proc, String) {
    let mut args = vec!["--bind", "127.0.0.1:0"];
    if let Some(j) = join {
        args.extend(["--join", j]);
    }
    let p = spawn(env!("CARGO_BIN_EXE_greeter"), &args);
    let line = p
        .lines
        .recv_timeout(Duration::from_secs(30))
        .expect("greeter printed its address");
    let addr = line.rsplit(' ').next().unwrap().to_owned();
    assert!(line.contains("serving Greeter.Hello at"), "{line}");
    (p, addr)
}

/// Runs the client to completion (bounded) and returns its stdout.
fn client(seed: &str, count: &str, interval_ms: &str) -> (bool, Vec<String>) {
    let mut p = spawn(
        env!("CARGO_BIN_EXE_greeter-client"),
        &[
            "--join",
            seed,
            "--count",
            count,
            "--interval-ms",
            interval_ms,
        ],
    );
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        match p.lines.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => out.push(l),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                assert!(std::time::Instant::now() < deadline, "client hung: {out:?}")
            }
        }
    }
    let ok = p.child.wait().unwrap().success();
    (ok, out)
}

#[test]
fn three_greeter_processes_balance_and_survive_a_kill() {
    let (_g0, seed) = greeter(None);
    let (_g1, _) = greeter(Some(&seed));
    let (mut g2, _) = greeter(Some(&seed));

    // The client waits until it sees a greeter; the greeters joined before it started.
    let (ok, out) = client(&seed, "60", "0");
    assert!(ok, "{out:?}");
    assert_eq!(
        out.iter().filter(|l| l.starts_with("Hello John")).count(),
        60,
        "{out:?}"
    );
    let per_node: Vec<u64> = out
        .iter()
        .skip_while(|l| !l.starts_with("calls per greeter node"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    println!("calls per node: {per_node:?}");
    assert_eq!(per_node.len(), 3, "{out:?}");
    // 20 each on average (binomial sd about 3.7): 6 is far below anything but a broken balancer.
    assert!(per_node.iter().all(|&n| n >= 6), "unbalanced: {per_node:?}");

    // Kill a greeter with SIGKILL while a client calls every 10 ms: no call fails.
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        g2.child.kill().unwrap();
        g2
    });
    let (ok, out) = client(&seed, "200", "10");
    drop(killer.join().unwrap());
    assert!(ok, "client saw failures: {out:?}");
    assert_eq!(
        out.iter().filter(|l| l.starts_with("Hello John")).count(),
        200
    );
    assert!(out.iter().any(|l| l == "failures: 0"));
}

/// `mesh-bench --json` runs end to end (short runs, the unary and stream sections) and prints
/// one JSON object per line with the fields the benchmark issue asks for, ratios included.
#[test]
fn mesh_bench_prints_json_lines_with_ratios() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mesh-bench"))
        .args([
            "--json",
            "--seconds",
            "0.2",
            "--only",
            "unary,stream",
            "--size",
            "64",
            "--concurrency",
            "1",
        ])
        .output()
        .expect("mesh-bench runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let benches: Vec<&str> = rows.iter().filter_map(|r| r["bench"].as_str()).collect();
    assert_eq!(
        benches,
        ["baseline", "unary", "baseline", "batched", "stream"]
    );
    for r in &rows {
        for field in [
            "size",
            "concurrency",
            "calls_per_s",
            "p50_us",
            "p99_us",
            "ratio",
        ] {
            assert!(r.get(field).is_some(), "{field} missing in {r}");
        }
        assert!(r["calls_per_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert_eq!(rows[0]["ratio"].as_f64(), Some(1.0));
}

//! The optional HTTP listener of `mesh-node run --http ADDR`: health, members, services,
//! Prometheus metrics, an API gateway (`POST /call/{service}/{endpoint}`) and a status page.
//!
//! A deliberately small HTTP/1.1 server: one request per connection (`Connection: close`),
//! headers parsed by `httparse`, hard limits on header size, body size, time and connections.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_node::connections::ConnectionStats;
use mesh_node::{CallOptions, ContentType, MemberView, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, info};

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const MAX_CONNECTIONS: usize = 64;
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` and serves until the returned task is aborted.
pub(crate) async fn serve(node: Node, addr: SocketAddr) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    info!(addr = %listener.local_addr()?, "HTTP listener");
    println!("http listening at {}", listener.local_addr()?);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let node = node.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = handle(node, stream).await {
                    debug!(%peer, error = %e, "http connection");
                }
            });
        }
    }))
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn json(status: u16, v: &serde_json::Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: v.to_string().into_bytes(),
        }
    }
    fn error(status: u16, msg: impl Into<String>) -> Self {
        Self::json(status, &serde_json::json!({ "error": msg.into() }))
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        _ => mesh_protocol::code::status(status),
    }
}

async fn handle(node: Node, mut stream: TcpStream) -> std::io::Result<()> {
    let response = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await {
        Err(_) => Response::error(408, "request not received in time"),
        Ok(Err(r)) => r,
        Ok(Ok((method, path, body))) => route(&node, &method, &path, body).await,
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&response.body).await?;
    stream.shutdown().await
}

/// Reads one request: (method, path, body). Anything malformed or too large is a response.
async fn read_request(stream: &mut TcpStream) -> Result<(String, String, Vec<u8>), Response> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| Response::error(400, e.to_string()))?;
        if n == 0 {
            return Err(Response::error(400, "connection closed inside the request"));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD {
                    return Err(Response::error(431, "request head over 16 KiB"));
                }
            }
            Err(e) => return Err(Response::error(400, format!("malformed request: {e}"))),
            Ok(httparse::Status::Complete(head_len)) => {
                let method = req.method.unwrap_or("").to_owned();
                let path = req.path.unwrap_or("/").to_owned();
                let mut length = 0usize;
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse().ok())
                            .ok_or_else(|| Response::error(400, "bad content-length"))?;
                    }
                    if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err(Response::error(
                            400,
                            "chunked bodies are not supported; send content-length",
                        ));
                    }
                }
                if length > MAX_BODY {
                    return Err(Response::error(413, "body over 1 MiB"));
                }
                let mut body = buf[head_len..].to_vec();
                body.truncate(length);
                while body.len() < length {
                    let n = stream
                        .read(&mut chunk)
                        .await
                        .map_err(|e| Response::error(400, e.to_string()))?;
                    if n == 0 {
                        return Err(Response::error(400, "connection closed inside the body"));
                    }
                    let take = n.min(length - body.len());
                    body.extend_from_slice(&chunk[..take]);
                }
                return Ok((method, path, body));
            }
        }
    }
}

async fn route(node: &Node, method: &str, path: &str, body: Vec<u8>) -> Response {
    let path = path.split('?').next().unwrap_or("/");
    match (method, path) {
        ("GET", "/") => status_page(node).await,
        ("GET", "/health") => {
            let n = node
                .membership()
                .query(|c| c.num_active())
                .await
                .unwrap_or(0);
            Response::json(
                200,
                &serde_json::json!({"status": "ok", "name": node.name(), "members": n}),
            )
        }
        ("GET", "/members") => match members(node).await {
            Ok(m) => Response::json(200, &serde_json::json!(m)),
            Err(e) => Response::error(503, e),
        },
        ("GET", "/services") => match node.membership().visible_records().await {
            Ok(records) => {
                let rows: Vec<_> = records
                    .iter()
                    .flat_map(|r| {
                        r.services.iter().map(move |s| serde_json::json!({
                            "service": s.name, "version": s.version, "node": r.name,
                            "addr": r.id.addr.to_string(),
                            "endpoints": s.endpoints.iter().map(|e| &e.name).collect::<Vec<_>>(),
                        }))
                    })
                    .collect();
                Response::json(200, &serde_json::json!(rows))
            }
            Err(e) => Response::error(503, e.to_string()),
        },
        ("GET", "/metrics") => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: metrics(node).await.into_bytes(),
        },
        ("POST", p) if p.starts_with("/call/") => gateway(node, &p["/call/".len()..], body).await,
        (_, "/" | "/health" | "/members" | "/services" | "/metrics") => {
            Response::error(405, "use GET")
        }
        (_, p) if p.starts_with("/call/") => Response::error(405, "use POST"),
        _ => Response::error(404, format!("no route {path}")),
    }
}

async fn members(node: &Node) -> Result<Vec<MemberView>, String> {
    let m = node
        .membership()
        .members()
        .await
        .map_err(|e| e.to_string())?;
    Ok(m.into_iter().map(MemberView::from).collect())
}

async fn gateway(node: &Node, rest: &str, body: Vec<u8>) -> Response {
    let Some((service, endpoint)) = rest.split_once('/') else {
        return Response::error(404, "use /call/{service}/{endpoint}");
    };
    if service.is_empty() || endpoint.is_empty() || endpoint.contains('/') {
        return Response::error(404, "use /call/{service}/{endpoint}");
    }
    // Validate here so that a client's bad JSON is a 400 from the gateway, not a handler error.
    if serde_json::from_slice::<serde_json::Value>(&body).is_err() {
        return Response::error(400, "the body is not valid JSON");
    }
    let opts = CallOptions::default().content_type(ContentType::Json);
    match node.call_raw(service, endpoint, body.into(), &opts).await {
        Ok(reply) => Response {
            status: 200,
            content_type: "application/json",
            body: reply.to_vec(),
        },
        Err(e) => {
            let status = if (400..600).contains(&e.code) {
                e.code
            } else {
                502
            };
            Response::json(
                status,
                &serde_json::json!({
                    "id": e.id, "code": e.code, "detail": e.detail, "status": e.status,
                }),
            )
        }
    }
}

/// Prometheus text exposition format, version 0.0.4.
async fn metrics(node: &Node) -> String {
    let mut out = String::new();
    let members = node.membership().members().await.unwrap_or_default();
    let _ = writeln!(
        out,
        "# HELP mesh_members Cluster members by state, as this node sees them."
    );
    let _ = writeln!(out, "# TYPE mesh_members gauge");
    for state in ["alive", "suspect", "down", "left"] {
        let n = members.iter().filter(|m| m.state.as_str() == state).count();
        let _ = writeln!(out, "mesh_members{{state=\"{state}\"}} {n}");
    }
    let stats = node.stats();
    let _ = writeln!(out, "# HELP mesh_calls_total Calls served, per endpoint.");
    let _ = writeln!(out, "# TYPE mesh_calls_total counter");
    for (e, s) in &stats {
        let _ = writeln!(
            out,
            "mesh_calls_total{{endpoint=\"{}\"}} {}",
            escape(e),
            s.requests
        );
    }
    let _ = writeln!(
        out,
        "# HELP mesh_call_errors_total Calls served that ended in an error reply, per endpoint."
    );
    let _ = writeln!(out, "# TYPE mesh_call_errors_total counter");
    for (e, s) in &stats {
        let _ = writeln!(
            out,
            "mesh_call_errors_total{{endpoint=\"{}\"}} {}",
            escape(e),
            s.errors
        );
    }
    let _ = writeln!(
        out,
        "# HELP mesh_call_duration_seconds Time to serve a call, per endpoint."
    );
    let _ = writeln!(out, "# TYPE mesh_call_duration_seconds histogram");
    for (e, s) in &stats {
        let e = escape(e);
        let mut cumulative = 0;
        for (i, n) in s.histogram.iter().enumerate() {
            cumulative += n;
            let bound = mesh_node::stats::bucket_bound_us(i);
            let le = if bound == u64::MAX {
                "+Inf".to_owned()
            } else {
                format!("{}", bound as f64 / 1e6)
            };
            let _ = writeln!(
                out,
                "mesh_call_duration_seconds_bucket{{endpoint=\"{e}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "mesh_call_duration_seconds_sum{{endpoint=\"{e}\"}} {}",
            s.sum_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "mesh_call_duration_seconds_count{{endpoint=\"{e}\"}} {}",
            s.requests
        );
    }
    let _ = writeln!(
        out,
        "# HELP mesh_client_retries_total Call attempts after the first, made by this node."
    );
    let _ = writeln!(out, "# TYPE mesh_client_retries_total counter");
    let _ = writeln!(out, "mesh_client_retries_total {}", node.retries());
    connection_metrics(&mut out, &node.connection_stats());
    if let Ok((g, health)) = node
        .membership()
        .query(|c| (c.stats().clone(), c.health_score()))
        .await
    {
        let _ = writeln!(
            out,
            "# HELP mesh_health_score This node's Lifeguard health score: 0 is healthy; its probe \
             interval and timeout are stretched by score + 1."
        );
        let _ = writeln!(out, "# TYPE mesh_health_score gauge");
        let _ = writeln!(out, "mesh_health_score {health}");
        let _ = writeln!(
            out,
            "# HELP mesh_gossip_bytes_total Membership datagram bytes, by direction."
        );
        let _ = writeln!(out, "# TYPE mesh_gossip_bytes_total counter");
        let _ = writeln!(
            out,
            "mesh_gossip_bytes_total{{direction=\"in\"}} {}",
            g.bytes_in
        );
        let _ = writeln!(
            out,
            "mesh_gossip_bytes_total{{direction=\"out\"}} {}",
            g.bytes_out
        );
        let _ = writeln!(
            out,
            "# HELP mesh_gossip_dropped_total Membership datagrams dropped, by reason."
        );
        let _ = writeln!(out, "# TYPE mesh_gossip_dropped_total counter");
        let port = node.socket_stats();
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        for (reason, n) in [
            ("garbage", g.dropped_garbage),
            ("version", g.dropped_version),
            ("other_cluster", g.dropped_other_cluster),
            ("malformed", g.dropped_malformed),
            ("foreign_key", g.dropped_foreign_key),
            ("unauthentic", g.dropped_unauthentic),
            ("unsealed", g.dropped_unsealed),
            ("sealed", g.dropped_sealed),
            // The queues between the UDP port and the membership driver: a driver that falls
            // behind loses datagrams here, which SWIM sees as missed acks.
            ("receive_queue_full", port.gossip_in_dropped.load(relaxed)),
            ("send_queue_full", port.gossip_send_dropped.load(relaxed)),
            ("send_error", port.gossip_send_errors.load(relaxed)),
        ] {
            let _ = writeln!(out, "mesh_gossip_dropped_total{{reason=\"{reason}\"}} {n}");
        }
    }
    out
}

/// The node's QUIC connections: gauges of the table, counters of evictions and refusals.
fn connection_metrics(out: &mut String, s: &ConnectionStats) {
    let gauges = [
        ("mesh_connections", "Open QUIC connections.", s.open),
        (
            "mesh_connections_busy",
            "Open QUIC connections in use (a stream open or a handle held).",
            s.busy,
        ),
        (
            "mesh_connections_max",
            "The connection cap: beyond it, the least recently used idle connection closes.",
            s.max_connections,
        ),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name} {v}");
    }
    let counters = [
        (
            "mesh_connection_evictions_total",
            "Idle connections closed to stay under the cap.",
            s.evictions,
        ),
        (
            "mesh_connection_cap_overruns_total",
            "Connections opened over the cap because every open one was in use.",
            s.cap_overruns,
        ),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {v}");
    }
    let _ = writeln!(
        out,
        "# HELP mesh_connection_handshakes_total Handshakes dialed, and accepted with a valid identity."
    );
    let _ = writeln!(out, "# TYPE mesh_connection_handshakes_total counter");
    for (side, n) in [("dialed", s.dialed), ("accepted", s.accepted)] {
        let _ = writeln!(
            out,
            "mesh_connection_handshakes_total{{side=\"{side}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP mesh_connections_refused_total Connections refused, by reason: identity (the \
         certificate names no single address, or another than the one dialed), limit (cap and \
         overrun used up), handshakes (too many in progress)."
    );
    let _ = writeln!(out, "# TYPE mesh_connections_refused_total counter");
    for (reason, n) in [
        ("identity", s.refused_identity),
        ("limit", s.refused_limit),
        ("handshakes", s.refused_handshakes),
    ] {
        let _ = writeln!(
            out,
            "mesh_connections_refused_total{{reason=\"{reason}\"}} {n}"
        );
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn status_page(node: &Node) -> Response {
    let members = members(node).await.unwrap_or_default();
    let records = node
        .membership()
        .visible_records()
        .await
        .unwrap_or_default();
    let mut page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>mesh: {name}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head><body>\
         <h1>mesh node {name}</h1><p>{addr}</p><h2>Members</h2>\
         <table><tr><th>name</th><th>address</th><th>state</th></tr>",
        name = html(node.name()),
        addr = node.addr()
    );
    for m in &members {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            html(&m.name),
            html(&m.addr),
            html(&m.state)
        );
    }
    page.push_str("</table><h2>Services</h2><table><tr><th>service</th><th>version</th><th>node</th><th>endpoints</th></tr>");
    for r in &records {
        for s in &r.services {
            let eps: Vec<&str> = s.endpoints.iter().map(|e| e.name.as_str()).collect();
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{} ({})</td><td>{}</td></tr>",
                html(&s.name),
                html(&s.version),
                html(&r.name),
                r.id.addr,
                html(&eps.join(", "))
            );
        }
    }
    page.push_str("</table></body></html>");
    Response {
        status: 200,
        content_type: "text/html; charset=utf-8",
        body: page.into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_metrics_are_prometheus_text() {
        let mut s = ConnectionStats::default();
        s.open = 2;
        s.busy = 1;
        s.max_connections = 2;
        s.evictions = 3;
        s.cap_overruns = 1;
        s.refused_identity = 4;
        let mut out = String::new();
        connection_metrics(&mut out, &s);
        for line in [
            "# TYPE mesh_connections gauge",
            "mesh_connections 2",
            "mesh_connections_busy 1",
            "mesh_connections_max 2",
            "# TYPE mesh_connection_evictions_total counter",
            "mesh_connection_evictions_total 3",
            "mesh_connection_cap_overruns_total 1",
            "mesh_connection_handshakes_total{side=\"dialed\"} 0",
            "mesh_connections_refused_total{reason=\"identity\"} 4",
            "mesh_connections_refused_total{reason=\"limit\"} 0",
        ] {
            assert!(
                out.lines().any(|l| l == line),
                "{line:?} missing from:\n{out}"
            );
        }
        // Every sample line is `name{labels} value` with a number.
        for l in out.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = l.rsplit_once(' ').unwrap();
            assert!(v.parse::<u64>().is_ok(), "{l}");
        }
    }
}

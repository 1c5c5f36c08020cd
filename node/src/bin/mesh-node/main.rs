//! `mesh-node`: run a node, inspect and use a running cluster, manage credentials.
//!
//! Exit codes: 0 success; 1 the operation failed (a call's error reply, an unreachable seed, a
//! subscriber that did not acknowledge); 2 bad usage (flags, JSON, files).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use mesh_membership::MembershipConfig;
use mesh_node::security::{CertificateAuthority, ClusterKey};
use mesh_node::stats::EndpointStats;
use mesh_node::{
    CallOptions, ContentType, Credentials, MemberView, Node, NodeBuilder, PublishOptions,
    BUILTIN_SERVICE,
};
use mesh_protocol::NodeRecord;

mod demo;
mod http;

/// Peer-to-peer microservices: one node per process, no registry server.
#[derive(Parser, Debug)]
#[command(name = "mesh-node", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node until SIGINT or SIGTERM, then leave the cluster gracefully.
    Run(RunArgs),
    /// Start a few nodes in this process, call a service across them, crash one, and show what
    /// happens.
    Demo,
    /// Print a new random cluster key.
    Keygen,
    /// Cluster CA: create one, or issue node certificates.
    #[command(subcommand)]
    Ca(CaCommand),
    /// List the members of the cluster, as the seed sees them.
    Members(Inspect),
    /// List services (or the nodes of one service), as the seed sees them.
    Services {
        /// Only this service.
        name: Option<String>,
        #[command(flatten)]
        inspect: Inspect,
    },
    /// Call SERVICE.ENDPOINT with a JSON request; prints the JSON reply.
    Call {
        /// Service name.
        service: String,
        /// Endpoint name.
        endpoint: String,
        /// Request body as JSON.
        #[arg(value_name = "JSON")]
        body: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 5_000)]
        timeout_ms: u64,
        #[command(flatten)]
        inspect: Inspect,
    },
    /// Ask one node (by address) whether it is healthy.
    Health {
        /// The node's address.
        node: SocketAddr,
        #[command(flatten)]
        creds: CredArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Calls served per endpoint by every alive member.
    Stats(Inspect),
    /// Stream registry changes (members, services) as they happen.
    Watch(Inspect),
    /// Publish a JSON message to a topic.
    Publish {
        /// Topic.
        topic: String,
        /// Message as JSON.
        #[arg(value_name = "JSON")]
        body: String,
        /// Wait for every subscriber node to acknowledge; exit 1 if one did not.
        #[arg(long)]
        ack: bool,
        #[command(flatten)]
        inspect: Inspect,
    },
    /// Subscribe to a topic and print each message as one JSON line.
    Subscribe {
        /// Topic.
        topic: String,
        /// Join this queue group (one member of the group gets each message).
        #[arg(long)]
        queue: Option<String>,
        #[command(flatten)]
        inspect: Inspect,
    },
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Create a cluster CA: ca.pem (give it to every node) and ca.key (keep it safe).
    Init {
        /// Where to write the files.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Issue NAME.pem and NAME.key, a node certificate naming the node's advertised address.
    Issue {
        /// Node name (file names).
        name: String,
        /// The node's advertised address.
        #[arg(long)]
        addr: SocketAddr,
        /// Where ca.pem and ca.key are, and where to write the files.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

/// How to prove cluster membership. With nothing given: `MESH_CLUSTER_KEY` if set, else the key
/// file (created on first use).
#[derive(Args, Debug, Clone)]
struct CredArgs {
    /// Cluster key file (default: $XDG_CONFIG_HOME/mesh/cluster.key or ~/.config/mesh/cluster.key).
    #[arg(long, env = "MESH_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Cluster CA certificate (CA mode, with --cert and --key).
    #[arg(long, env = "MESH_CA_CERT", requires_all = ["cert", "key"])]
    ca_cert: Option<PathBuf>,
    /// This node's certificate (CA mode).
    #[arg(long, env = "MESH_CERT")]
    cert: Option<PathBuf>,
    /// This node's private key (CA mode).
    #[arg(long, env = "MESH_KEY")]
    key: Option<PathBuf>,
    /// Cluster name.
    #[arg(long, env = "MESH_CLUSTER", default_value = "mesh")]
    cluster: String,
}

/// A command that talks to a running cluster through a seed.
#[derive(Args, Debug, Clone)]
struct Inspect {
    /// Any member of the cluster.
    #[arg(long, env = "MESH_JOIN", value_delimiter = ',', required = true)]
    join: Vec<SocketAddr>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    creds: CredArgs,
}

const DEFAULT_BIND: &str = "127.0.0.1:7946";
const DEFAULT_PRESET: &str = "lan";

#[derive(Args, Debug)]
struct RunArgs {
    /// Node name.
    #[arg(long, env = "MESH_NAME")]
    name: Option<String>,
    /// UDP address to bind.
    #[arg(long, env = "MESH_BIND", default_value = DEFAULT_BIND)]
    bind: SocketAddr,
    /// Address peers reach this node at (default: the bound address).
    #[arg(long, env = "MESH_ADVERTISE")]
    advertise: Option<SocketAddr>,
    /// Seeds to join through (comma-separated).
    #[arg(long, env = "MESH_JOIN", value_delimiter = ',')]
    join: Vec<SocketAddr>,
    /// HTTP listener: /health, /members, /services, /metrics, POST /call/{service}/{endpoint}.
    #[arg(long, env = "MESH_HTTP")]
    http: Option<SocketAddr>,
    /// Membership preset: lan, wan or local.
    #[arg(long, env = "MESH_PRESET", default_value = DEFAULT_PRESET)]
    preset: String,
    /// A TOML file with any of the flags above (flags and environment win).
    #[arg(long, env = "MESH_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    creds: CredArgs,
}

/// The fields of `--config FILE`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    name: Option<String>,
    bind: Option<SocketAddr>,
    advertise: Option<SocketAddr>,
    join: Option<Vec<SocketAddr>>,
    http: Option<SocketAddr>,
    preset: Option<String>,
    cluster: Option<String>,
    key_file: Option<PathBuf>,
}

/// A failure with the exit code it deserves.
struct Failure(u8, anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(1, e.into())
    }
}

fn usage(e: impl Into<anyhow::Error>) -> Failure {
    Failure(2, e.into())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // Commands that print results keep the log quiet unless asked.
        let default = if matches!(cli.command, Command::Run(_)) {
            "info"
        } else {
            "warn"
        };
        tracing_subscriber::EnvFilter::new(default)
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Run(args) => run_node(args).await,
        Command::Demo => demo::run().await.map_err(Failure::from),
        Command::Keygen => {
            println!("{}", new_key());
            Ok(())
        }
        Command::Ca(CaCommand::Init { dir }) => ca_init(&dir),
        Command::Ca(CaCommand::Issue { name, addr, dir }) => ca_issue(&dir, &name, addr),
        Command::Members(i) => members(&i).await,
        Command::Services { name, inspect } => services(&inspect, name.as_deref()).await,
        Command::Call {
            service,
            endpoint,
            body,
            timeout_ms,
            inspect,
        } => {
            call(
                &inspect,
                &service,
                &endpoint,
                &body,
                Duration::from_millis(timeout_ms),
            )
            .await
        }
        Command::Health { node, creds, json } => health(&creds, node, json).await,
        Command::Stats(i) => stats(&i).await,
        Command::Watch(i) => watch(&i).await,
        Command::Publish {
            topic,
            body,
            ack,
            inspect,
        } => publish(&inspect, &topic, &body, ack).await,
        Command::Subscribe {
            topic,
            queue,
            inspect,
        } => subscribe(&inspect, &topic, queue).await,
    }
}

// ---- credentials ----

fn new_key() -> String {
    let mut raw = [0u8; 32];
    // The OS RNG through ring (already a dependency), 256 bits, hex.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw).is_err() {
        // Only on a broken OS RNG: refuse rather than hand out a weak key.
        eprintln!("error: the operating system's random number generator failed");
        std::process::exit(1);
    }
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

fn default_key_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("mesh").join("cluster.key"))
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(contents.as_bytes())
}

/// Creates the key file atomically: written in full under a temporary name, then linked into
/// place, which fails if another process got there first, so nobody ever reads a partial key.
fn create_key_file(path: &Path) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    write_private(&tmp, &new_key())?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    linked
}

/// Resolves credentials: CA files, then `MESH_CLUSTER_KEY`, then the key file (created if
/// missing, and said so in the log).
fn credentials(c: &CredArgs) -> Result<Credentials, Failure> {
    if let (Some(ca), Some(cert), Some(key)) = (&c.ca_cert, &c.cert, &c.key) {
        return Credentials::ca_from_pem_files(ca, cert, key).map_err(usage);
    }
    if let Some(k) = ClusterKey::from_env() {
        return Ok(Credentials::Key(k.map_err(usage)?));
    }
    let path = match &c.key_file {
        Some(p) => p.clone(),
        None => default_key_file()
            .context(
                "no MESH_CLUSTER_KEY, no --key-file, and no home directory for a default key file",
            )
            .map_err(usage)?,
    };
    if !path.exists() {
        if c.key_file.is_some() {
            return Err(usage(anyhow::anyhow!(
                "key file {} does not exist",
                path.display()
            )));
        }
        match create_key_file(&path) {
            Ok(()) => tracing::warn!(
                path = %path.display(),
                "created a new cluster key: processes on this machine that use it join each other; copy it to other machines to let them in"
            ),
            // Another process created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(usage(anyhow::anyhow!(
                    "cannot create {}: {e}",
                    path.display()
                )))
            }
        }
    } else {
        tracing::info!(path = %path.display(), "using the cluster key file");
    }
    Ok(Credentials::Key(
        ClusterKey::from_file(&path).map_err(usage)?,
    ))
}

fn ca_init(dir: &Path) -> Result<(), Failure> {
    let ca = CertificateAuthority::generate("mesh cluster CA")?;
    let (cert, key) = ca.to_pem();
    std::fs::create_dir_all(dir).map_err(usage)?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    if cert_path.exists() || key_path.exists() {
        return Err(usage(anyhow::anyhow!(
            "{} already holds a CA: not overwriting it",
            dir.display()
        )));
    }
    std::fs::write(&cert_path, cert).map_err(usage)?;
    write_private(&key_path, &key).map_err(usage)?;
    println!(
        "wrote {} (give it to every node) and {} (keep it safe)",
        cert_path.display(),
        key_path.display()
    );
    Ok(())
}

fn ca_issue(dir: &Path, name: &str, addr: SocketAddr) -> Result<(), Failure> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(usage(anyhow::anyhow!("{name:?} is not a usable node name")));
    }
    let key_pem = std::fs::read_to_string(dir.join("ca.key"))
        .with_context(|| format!("reading {}", dir.join("ca.key").display()))
        .map_err(usage)?;
    let ca = CertificateAuthority::from_key_pem("mesh cluster CA", &key_pem).map_err(usage)?;
    let node = ca.issue(name, &[addr])?;
    let (cert, key) = node.to_pem();
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, cert).map_err(usage)?;
    write_private(&key_path, &key).map_err(usage)?;
    println!(
        "wrote {} and {} for {name} at {addr}: run it with --ca-cert {} --cert {} --key {}",
        cert_path.display(),
        key_path.display(),
        dir.join("ca.pem").display(),
        cert_path.display(),
        key_path.display()
    );
    Ok(())
}

// ---- running a node ----

fn preset(name: &str, cluster: &str) -> Result<MembershipConfig, Failure> {
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

async fn run_node(mut args: RunArgs) -> Result<(), Failure> {
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))
            .map_err(usage)?;
        let file: FileConfig = toml::from_str(&text)
            .with_context(|| format!("in {}", path.display()))
            .map_err(usage)?;
        // The file fills in what flags and environment left at their defaults.
        if args.name.is_none() {
            args.name = file.name;
        }
        if args.bind == DEFAULT_BIND.parse().unwrap_or(args.bind) {
            if let Some(b) = file.bind {
                args.bind = b;
            }
        }
        if args.advertise.is_none() {
            args.advertise = file.advertise;
        }
        if args.join.is_empty() {
            args.join = file.join.unwrap_or_default();
        }
        if args.http.is_none() {
            args.http = file.http;
        }
        if args.preset == DEFAULT_PRESET {
            if let Some(p) = file.preset {
                args.preset = p;
            }
        }
        if args.creds.cluster == "mesh" {
            if let Some(c) = file.cluster {
                args.creds.cluster = c;
            }
        }
        if args.creds.key_file.is_none() {
            args.creds.key_file = file.key_file;
        }
    }
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
    let http = match args.http {
        Some(addr) => Some(
            http::serve(node.clone(), addr)
                .await
                .with_context(|| format!("HTTP listener on {addr}"))?,
        ),
        None => None,
    };
    shutdown_signal().await;
    tracing::info!("signal received: leaving the cluster");
    if let Some(h) = http {
        h.abort();
    }
    node.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
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

// ---- talking to a running cluster ----

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

async fn members(i: &Inspect) -> Result<(), Failure> {
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

async fn services(i: &Inspect, only: Option<&str>) -> Result<(), Failure> {
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

async fn call(
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

async fn health(creds: &CredArgs, target: SocketAddr, json: bool) -> Result<(), Failure> {
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

async fn stats(i: &Inspect) -> Result<(), Failure> {
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

async fn watch(i: &Inspect) -> Result<(), Failure> {
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

async fn publish(i: &Inspect, topic: &str, json: &str, ack: bool) -> Result<(), Failure> {
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

async fn subscribe(i: &Inspect, topic: &str, queue: Option<String>) -> Result<(), Failure> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn new_keys_are_random_hex() {
        let (a, b) = (new_key(), new_key());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}

//! Runnable examples of mesh, each a binary of this crate that works across processes:
//!
//! - `greeter`: serves `Greeter.Hello` (`{"name":"John"}` gives `{"greeting":"Hello John"}`).
//! - `greeter-client`: calls `Greeter.Hello` by name and shows how the calls spread.
//! - `function`: a node that serves one `Function.Reverse` request and leaves.
//!
//! Every example takes `--bind ADDR`, `--advertise ADDR`, `--join SEED[,SEED...]` and
//! `--name NAME`, and reads the cluster key from `MESH_CLUSTER_KEY`:
//!
//! ```sh
//! export MESH_CLUSTER_KEY=$(head -c 24 /dev/urandom | base64)
//! cargo run -p mesh-examples --bin greeter -- --bind 127.0.0.1:7000
//! cargo run -p mesh-examples --bin greeter -- --bind 127.0.0.1:7001 --join 127.0.0.1:7000
//! cargo run -p mesh-examples --bin greeter-client -- --join 127.0.0.1:7000 --count 20
//! ```
//!
//! This library holds what the examples share: flag parsing and node set-up.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use mesh_membership::MembershipConfig;
use mesh_node::{Credentials, NodeBuilder};
use serde::{Deserialize, Serialize};

/// The request of `Greeter.Hello`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloRequest {
    /// Who to greet.
    pub name: String,
}

/// The reply of `Greeter.Hello`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HelloResponse {
    /// `"Hello <name>"`.
    pub greeting: String,
}

/// A byte payload that MessagePack encodes as `bin` (serde's default for `Vec<u8>` is an array
/// of integers, one byte each at best): what the benchmarks send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob(pub Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Blob;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Flags every example understands, plus the ones it asked for.
#[derive(Debug, Clone)]
pub struct Args {
    /// `--bind`: UDP address to bind (default `127.0.0.1:0`).
    pub bind: SocketAddr,
    /// `--advertise`: address peers reach this node at (default: the bound one).
    pub advertise: Option<SocketAddr>,
    /// `--join`: seeds.
    pub join: Vec<SocketAddr>,
    /// `--name`: node name.
    pub name: Option<String>,
    /// Other `--flag value` pairs.
    pub extra: Vec<(String, String)>,
}

impl Args {
    /// Parses `std::env::args()`. `extra` names the example's own flags that take a value.
    pub fn parse(extra: &[&str]) -> anyhow::Result<Self> {
        Self::parse_from(std::env::args().skip(1), extra, &[])
    }

    /// Like [`parse`](Self::parse), with `switches`: flags without a value (their value is
    /// `"true"`).
    pub fn parse_with_switches(extra: &[&str], switches: &[&str]) -> anyhow::Result<Self> {
        Self::parse_from(std::env::args().skip(1), extra, switches)
    }

    /// Parses `args` (without the program name).
    pub fn parse_from(
        args: impl IntoIterator<Item = String>,
        extra: &[&str],
        switches: &[&str],
    ) -> anyhow::Result<Self> {
        let mut out = Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            join: Vec::new(),
            name: None,
            extra: Vec::new(),
        };
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let value = |it: &mut dyn Iterator<Item = String>| {
                it.next().with_context(|| format!("{flag} needs a value"))
            };
            match flag.as_str() {
                "--bind" => out.bind = parse_addr(&value(&mut it)?, "--bind")?,
                "--advertise" => out.advertise = Some(parse_addr(&value(&mut it)?, "--advertise")?),
                "--join" => {
                    for seed in value(&mut it)?.split(',').filter(|s| !s.is_empty()) {
                        out.join.push(parse_addr(seed, "--join")?);
                    }
                }
                "--name" => out.name = Some(value(&mut it)?),
                f if switches.contains(&f.trim_start_matches("--")) => {
                    out.extra
                        .push((f.trim_start_matches("--").to_owned(), "true".to_owned()));
                }
                f if extra.contains(&f.trim_start_matches("--")) => {
                    let v = value(&mut it)?;
                    out.extra.push((f.trim_start_matches("--").to_owned(), v));
                }
                other => bail!(
                    "unknown flag {other:?}; flags: --bind ADDR --advertise ADDR --join SEED[,SEED] --name NAME{}",
                    extra.iter().map(|e| format!(" --{e} VALUE")).chain(switches.iter().map(|e| format!(" --{e}"))).collect::<String>()
                ),
            }
        }
        Ok(out)
    }

    /// The value of the example's own flag `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.extra
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A node builder with these flags, the cluster key from `MESH_CLUSTER_KEY`, and membership
    /// settings for processes on one machine or a LAN.
    pub fn builder(&self, default_name: &str) -> anyhow::Result<NodeBuilder> {
        let key = std::env::var("MESH_CLUSTER_KEY").context(
            "set MESH_CLUSTER_KEY to the cluster's shared secret (the same in every process)",
        )?;
        let mut b = mesh_node::Node::builder()
            .name(self.name.clone().unwrap_or_else(|| default_name.to_owned()))
            .bind(self.bind)
            .seeds(self.join.clone())
            .credentials(Credentials::key(key)?)
            .membership(MembershipConfig::local())
            .drain_timeout(Duration::from_secs(5));
        if let Some(a) = self.advertise {
            b = b.advertise(a);
        }
        Ok(b)
    }
}

fn parse_addr(s: &str, flag: &str) -> anyhow::Result<SocketAddr> {
    s.parse()
        .with_context(|| format!("{flag}: {s:?} is not an address like 127.0.0.1:7000"))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn blob_is_msgpack_bin_and_round_trips() {
        let b = Blob(vec![1, 2, 3]);
        let bytes = mesh_node::ContentType::MsgPack.encode(&b).unwrap();
        assert_eq!(bytes, vec![0xc4, 3, 1, 2, 3]);
        assert_eq!(
            mesh_node::ContentType::MsgPack
                .decode::<Blob>(&bytes)
                .unwrap(),
            b
        );
    }

    #[test]
    fn flags() {
        let a = Args::parse_from(
            args("--bind 127.0.0.1:7001 --join 127.0.0.1:7000,127.0.0.1:7002 --count 5"),
            &["count"],
            &[],
        )
        .unwrap();
        assert_eq!(a.bind, "127.0.0.1:7001".parse().unwrap());
        assert_eq!(a.join.len(), 2);
        assert_eq!(a.get("count"), Some("5"));
        assert!(Args::parse_from(args("--bogus 1"), &[], &[]).is_err());
        assert!(Args::parse_from(args("--bind"), &[], &[]).is_err());
        let e = Args::parse_from(args("--join nowhere"), &[], &[]).unwrap_err();
        let a = Args::parse_from(args("--ack --publish t"), &["publish"], &["ack"]).unwrap();
        assert_eq!((a.get("ack"), a.get("publish")), (Some("true"), Some("t")));
        assert!(e.to_string().contains("--join"), "{e}");
    }
}

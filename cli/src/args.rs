//! The command line (clap types) and the `--config FILE` that fills in `run`'s flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

/// Peer-to-peer microservices: one node per process, no registry server.
#[derive(Parser, Debug)]
#[command(name = "mesh-node", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
pub(crate) enum CaCommand {
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
pub(crate) struct CredArgs {
    /// Cluster key file (default: $XDG_CONFIG_HOME/mesh/cluster.key or ~/.config/mesh/cluster.key).
    #[arg(long, env = "MESH_KEY_FILE")]
    pub(crate) key_file: Option<PathBuf>,
    /// Cluster CA certificate (CA mode, with --cert and --key).
    #[arg(long, env = "MESH_CA_CERT", requires_all = ["cert", "key"])]
    pub(crate) ca_cert: Option<PathBuf>,
    /// This node's certificate (CA mode).
    #[arg(long, env = "MESH_CERT")]
    pub(crate) cert: Option<PathBuf>,
    /// This node's private key (CA mode).
    #[arg(long, env = "MESH_KEY")]
    pub(crate) key: Option<PathBuf>,
    /// The cluster's gossip key (CA mode; default: gossip.key beside --ca-cert, as `ca init`
    /// writes it).
    #[arg(long, env = "MESH_GOSSIP_KEY")]
    pub(crate) gossip_key: Option<PathBuf>,
    /// Cluster name.
    #[arg(long, env = "MESH_CLUSTER", default_value = DEFAULT_CLUSTER)]
    pub(crate) cluster: String,
}

/// A command that talks to a running cluster through a seed.
#[derive(Args, Debug, Clone)]
pub(crate) struct Inspect {
    /// Any member of the cluster.
    #[arg(long, env = "MESH_JOIN", value_delimiter = ',', required = true)]
    pub(crate) join: Vec<SocketAddr>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) creds: CredArgs,
}

const DEFAULT_BIND: &str = "127.0.0.1:7946";
const DEFAULT_PRESET: &str = "lan";
const DEFAULT_CLUSTER: &str = "mesh";

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// Node name.
    #[arg(long, env = "MESH_NAME")]
    pub(crate) name: Option<String>,
    /// UDP address to bind.
    #[arg(long, env = "MESH_BIND", default_value = DEFAULT_BIND)]
    pub(crate) bind: SocketAddr,
    /// Address peers reach this node at (default: the bound address).
    #[arg(long, env = "MESH_ADVERTISE")]
    pub(crate) advertise: Option<SocketAddr>,
    /// Seeds to join through (comma-separated).
    #[arg(long, env = "MESH_JOIN", value_delimiter = ',')]
    pub(crate) join: Vec<SocketAddr>,
    /// HTTP listener: /health, /members, /services, /metrics, POST /call/{service}/{endpoint}.
    #[arg(long, env = "MESH_HTTP")]
    pub(crate) http: Option<SocketAddr>,
    /// Membership preset: lan, wan or local.
    #[arg(long, env = "MESH_PRESET", default_value = DEFAULT_PRESET)]
    pub(crate) preset: String,
    /// A TOML file with any of the flags above (flags and environment win).
    #[arg(long, env = "MESH_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) creds: CredArgs,
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

impl RunArgs {
    /// Reads `--config FILE`, if given, into what flags and environment left at their defaults.
    /// Every error here is the user's (a missing or malformed file).
    pub(crate) fn apply_config_file(&mut self) -> anyhow::Result<()> {
        let Some(path) = &self.config else {
            return Ok(());
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: FileConfig =
            toml::from_str(&text).with_context(|| format!("in {}", path.display()))?;
        self.apply(file);
        Ok(())
    }

    fn apply(&mut self, file: FileConfig) {
        if self.name.is_none() {
            self.name = file.name;
        }
        if self.bind == DEFAULT_BIND.parse().unwrap_or(self.bind) {
            if let Some(b) = file.bind {
                self.bind = b;
            }
        }
        if self.advertise.is_none() {
            self.advertise = file.advertise;
        }
        if self.join.is_empty() {
            self.join = file.join.unwrap_or_default();
        }
        if self.http.is_none() {
            self.http = file.http;
        }
        if self.preset == DEFAULT_PRESET {
            if let Some(p) = file.preset {
                self.preset = p;
            }
        }
        if self.creds.cluster == DEFAULT_CLUSTER {
            if let Some(c) = file.cluster {
                self.creds.cluster = c;
            }
        }
        if self.creds.key_file.is_none() {
            self.creds.key_file = file.key_file;
        }
    }
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
    fn the_config_file_fills_in_only_what_flags_left_at_defaults() {
        let cli = Cli::try_parse_from(["mesh-node", "run", "--name", "from-flag"]).unwrap();
        let Command::Run(mut args) = cli.command else {
            panic!("not a run command");
        };
        let file: FileConfig = toml::from_str(
            "name = \"from-file\"\nbind = \"10.0.0.1:7000\"\npreset = \"wan\"\ncluster = \"prod\"",
        )
        .unwrap();
        args.apply(file);
        assert_eq!(args.name.as_deref(), Some("from-flag"));
        assert_eq!(args.bind, "10.0.0.1:7000".parse::<SocketAddr>().unwrap());
        assert_eq!(
            (args.preset.as_str(), args.creds.cluster.as_str()),
            ("wan", "prod")
        );
        assert!(toml::from_str::<FileConfig>("nme = \"typo\"").is_err());
    }
}

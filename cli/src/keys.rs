//! Credentials: new cluster keys, key files, resolving `--key-file`/`MESH_CLUSTER_KEY`/CA files
//! into [`Credentials`], and the cluster CA (`ca init`, `ca issue`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use mesh_node::security::{CertificateAuthority, ClusterKey, GossipSecret};
use mesh_node::Credentials;

use crate::args::CredArgs;
use crate::error::{usage, Failure};

/// A new random cluster key: 256 bits from the OS RNG, as hex.
pub(crate) fn new_key() -> String {
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
pub(crate) fn credentials(c: &CredArgs) -> Result<Credentials, Failure> {
    if let (Some(ca), Some(cert), Some(key)) = (&c.ca_cert, &c.cert, &c.key) {
        let gossip = match &c.gossip_key {
            Some(g) => g.clone(),
            None => ca.with_file_name(GOSSIP_KEY_FILE),
        };
        return Credentials::ca_from_pem_files(ca, cert, key, &gossip).map_err(usage);
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

/// The gossip key file `ca init` writes beside the CA certificate, where nodes look for it.
const GOSSIP_KEY_FILE: &str = "gossip.key";

/// `mesh-node ca init`: writes `ca.pem`, `ca.key` (private) and `gossip.key` (private) into
/// `dir`, never overwriting a CA.
pub(crate) fn ca_init(dir: &Path) -> Result<(), Failure> {
    let ca = CertificateAuthority::generate("mesh cluster CA")?;
    let (cert, key) = ca.to_pem();
    std::fs::create_dir_all(dir).map_err(usage)?;
    let (cert_path, key_path, gossip_path) = (
        dir.join("ca.pem"),
        dir.join("ca.key"),
        dir.join(GOSSIP_KEY_FILE),
    );
    if cert_path.exists() || key_path.exists() || gossip_path.exists() {
        return Err(usage(anyhow::anyhow!(
            "{} already holds a CA: not overwriting it",
            dir.display()
        )));
    }
    let gossip = GossipSecret::generate()?;
    std::fs::write(&cert_path, cert).map_err(usage)?;
    write_private(&key_path, &key).map_err(usage)?;
    write_private(&gossip_path, &format!("{}\n", gossip.to_hex())).map_err(usage)?;
    println!(
        "wrote {} (give it to every node), {} (keep it safe) and {} (give it to every node, \
         privately: it seals gossip)",
        cert_path.display(),
        key_path.display(),
        gossip_path.display()
    );
    Ok(())
}

/// `mesh-node ca issue`: signs `NAME.pem` and `NAME.key` with the CA in `dir`, naming `addr`.
pub(crate) fn ca_issue(dir: &Path, name: &str, addr: SocketAddr) -> Result<(), Failure> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_keys_are_random_hex() {
        let (a, b) = (new_key(), new_key());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}

//! The datagram envelope: magic, format version and cluster tag, written before every SWIM
//! packet and checked before foca sees one.

/// First two bytes of every membership datagram: ASCII `MG`.
pub const DATAGRAM_MAGIC: [u8; 2] = *b"MG";
/// Version of the membership datagram format.
pub const DATAGRAM_VERSION: u8 = 1;
/// Bytes of envelope before the SWIM packet: magic (2), version (1), cluster tag (4).
pub const ENVELOPE_LEN: usize = 7;

/// The 32-bit tag of a cluster name (FNV-1a), carried in every datagram so that two clusters
/// sharing a network ignore each other.
pub fn cluster_tag(cluster: &str) -> u32 {
    cluster.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Writes the envelope for `tag`.
pub fn write_envelope(tag: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&DATAGRAM_MAGIC);
    out.push(DATAGRAM_VERSION);
    out.extend_from_slice(&tag.to_be_bytes());
}

/// Why a datagram was dropped before it reached foca.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Shorter than the envelope.
    #[error("datagram shorter than the envelope")]
    Truncated,
    /// Not a mesh membership datagram.
    #[error("bad magic")]
    BadMagic,
    /// A membership format version we do not speak.
    #[error("unsupported membership datagram version {0}")]
    Version(u8),
    /// Another cluster's datagram.
    #[error("datagram of another cluster (tag {0:08x})")]
    OtherCluster(u32),
}

/// Checks the envelope and returns the SWIM packet after it.
pub fn open_envelope(tag: u32, data: &[u8]) -> Result<&[u8], EnvelopeError> {
    let Some((head, rest)) = data.split_first_chunk::<ENVELOPE_LEN>() else {
        return Err(if data.len() >= 2 && data[..2] != DATAGRAM_MAGIC {
            EnvelopeError::BadMagic
        } else {
            EnvelopeError::Truncated
        });
    };
    if head[..2] != DATAGRAM_MAGIC {
        return Err(EnvelopeError::BadMagic);
    }
    if head[2] != DATAGRAM_VERSION {
        return Err(EnvelopeError::Version(head[2]));
    }
    let theirs = u32::from_be_bytes([head[3], head[4], head[5], head[6]]);
    if theirs != tag {
        return Err(EnvelopeError::OtherCluster(theirs));
    }
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_checks() {
        let tag = cluster_tag("mesh");
        let mut d = Vec::new();
        write_envelope(tag, &mut d);
        d.push(0xAB);
        assert_eq!(open_envelope(tag, &d), Ok(&[0xAB][..]));
        assert_eq!(
            open_envelope(cluster_tag("other"), &d),
            Err(EnvelopeError::OtherCluster(tag))
        );
        assert_eq!(open_envelope(tag, &d[..3]), Err(EnvelopeError::Truncated));
        assert_eq!(
            open_envelope(tag, b"GET / HTTP"),
            Err(EnvelopeError::BadMagic)
        );
        d[2] = 9;
        assert_eq!(open_envelope(tag, &d), Err(EnvelopeError::Version(9)));
    }
}

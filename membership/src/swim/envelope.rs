//! The datagram envelope (format 2) written before every SWIM packet and checked before foca sees
//! one: a magic byte with 0x40 and 0x80 clear (so it never looks like QUIC on a shared port), the
//! format version and the kind, then either the cluster tag and the packet in clear (unsealed), or
//! a key id, a nonce and the AES-256-GCM sealed cluster tag and packet (sealed).
//!
//! `docs/PROTOCOL.md` §7.1 specifies the bytes; the test vector there is checked below.

use ring::aead::{Aad, Nonce, NONCE_LEN};

use super::keyring::{KeyId, Keyring, NonceSource, KEY_ID_LEN};

/// First byte of every membership datagram: `0x0d`, ASCII `M` (0x4d) with its 0x40 bit cleared.
/// Its 0x40 and 0x80 bits are clear, so it is never mistaken for QUIC (whose packets all have 0x40
/// set when quinn runs with `grease_quic_bit(false)`), and it lies in 4–15, the range RFC 9443
/// leaves unassigned (not STUN, ZRTP or DTLS).
pub const DATAGRAM_MAGIC: u8 = 0x0d;
/// Version of the membership datagram format (1 was the `MG` envelope, inside QUIC only).
pub const DATAGRAM_VERSION: u8 = 2;
/// Kind byte: the cluster tag and the SWIM packet follow in clear.
pub const KIND_UNSEALED: u8 = 0;
/// Kind byte: key id, nonce, AES-256-GCM ciphertext of cluster tag and SWIM packet, tag.
pub const KIND_SEALED: u8 = 1;
/// Magic, version, kind.
const PREFIX_LEN: usize = 3;
/// Bytes of the cluster tag.
const CLUSTER_TAG_LEN: usize = 4;
/// Bytes of an AES-GCM authentication tag.
pub const AEAD_TAG_LEN: usize = 16;
/// Bytes an unsealed envelope adds to a SWIM packet: magic, version, kind (3), cluster tag (4).
pub const UNSEALED_OVERHEAD: usize = PREFIX_LEN + CLUSTER_TAG_LEN;
/// The header of a sealed envelope, and its AAD: magic, version, kind (3), key id (4), nonce (12).
pub const SEALED_HEADER_LEN: usize = PREFIX_LEN + KEY_ID_LEN + NONCE_LEN;
/// Bytes a sealed envelope adds to a SWIM packet: header (19), the encrypted cluster tag (4),
/// the AES-GCM tag (16).
pub const SEALED_OVERHEAD: usize = SEALED_HEADER_LEN + CLUSTER_TAG_LEN + AEAD_TAG_LEN;
/// The larger of the two overheads: what the core subtracts from `max_datagram_size` to size
/// foca's packets, in both modes, so that a keyring can be set or removed at any time.
pub const MAX_OVERHEAD: usize = if SEALED_OVERHEAD > UNSEALED_OVERHEAD {
    SEALED_OVERHEAD
} else {
    UNSEALED_OVERHEAD
};

/// The 32-bit tag of a cluster name (FNV-1a), carried in every datagram so that two clusters
/// sharing a network ignore each other.
pub fn cluster_tag(cluster: &str) -> u32 {
    cluster.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Why a datagram was dropped before it reached foca. Each variant is counted in one field of
/// the core's `Stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Shorter than its envelope (`dropped_garbage`).
    #[error("datagram shorter than the envelope")]
    Truncated,
    /// Not a mesh membership datagram (`dropped_garbage`).
    #[error("bad magic")]
    BadMagic,
    /// A membership format version we do not speak (`dropped_version`).
    #[error("unsupported membership datagram version {0}")]
    Version(u8),
    /// An envelope kind we do not speak (`dropped_version`).
    #[error("unsupported membership envelope kind {0}")]
    Kind(u8),
    /// Another cluster's datagram (`dropped_other_cluster`).
    #[error("datagram of another cluster (tag {0:08x})")]
    OtherCluster(u32),
    /// Unsealed, but this node holds a keyring and accepts only sealed datagrams
    /// (`dropped_unsealed`).
    #[error("unsealed datagram, but a keyring is configured")]
    Unsealed,
    /// Sealed, but this node holds no keyring (`dropped_sealed`).
    #[error("sealed datagram, but no keyring is configured")]
    Sealed,
    /// Sealed with a key this node does not hold (`dropped_foreign_key`).
    #[error("sealed with key {0}, which is not installed")]
    ForeignKey(KeyId),
    /// Sealed with a key we hold, but it does not open: forged, corrupted or truncated
    /// (`dropped_unauthentic`).
    #[error("sealed datagram failed authentication")]
    Unauthentic,
}

/// Why a datagram could not be sealed: the nonce source failed (the system's CSPRNG), or the
/// AEAD refused the input. Nothing is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("could not seal the datagram")]
pub struct SealError;

/// Writes an unsealed datagram: envelope for `tag`, then `packet`.
pub fn write_unsealed(tag: u32, packet: &[u8], out: &mut Vec<u8>) {
    out.reserve(UNSEALED_OVERHEAD + packet.len());
    out.extend_from_slice(&[DATAGRAM_MAGIC, DATAGRAM_VERSION, KIND_UNSEALED]);
    out.extend_from_slice(&tag.to_be_bytes());
    out.extend_from_slice(packet);
}

/// Writes a sealed datagram: the header (magic, version, kind, the primary's key id, `nonce`),
/// then `tag ‖ packet` encrypted with the primary key of `ring`, with the header as AAD, then the
/// AES-GCM tag. `out` is unchanged on error.
pub fn write_sealed(
    tag: u32,
    ring: &Keyring,
    nonce: [u8; NONCE_LEN],
    packet: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), SealError> {
    let (id, key) = ring.sealer();
    let start = out.len();
    out.reserve(SEALED_OVERHEAD + packet.len());
    out.extend_from_slice(&[DATAGRAM_MAGIC, DATAGRAM_VERSION, KIND_SEALED]);
    out.extend_from_slice(&id.0);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&tag.to_be_bytes());
    out.extend_from_slice(packet);
    let (head, body) = out.split_at_mut(start + SEALED_HEADER_LEN);
    let aad = Aad::from(&head[start..]);
    match key.seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), aad, body) {
        Ok(t) => {
            out.extend_from_slice(t.as_ref());
            Ok(())
        }
        Err(_) => {
            out.truncate(start);
            Err(SealError)
        }
    }
}

/// Checks magic, version and kind; returns the kind.
fn check_prefix(data: &[u8]) -> Result<u8, EnvelopeError> {
    let [magic, version, kind, ..] = *data else {
        return Err(EnvelopeError::Truncated);
    };
    if magic != DATAGRAM_MAGIC {
        return Err(EnvelopeError::BadMagic);
    }
    if version != DATAGRAM_VERSION {
        return Err(EnvelopeError::Version(version));
    }
    match kind {
        KIND_UNSEALED | KIND_SEALED => Ok(kind),
        k => Err(EnvelopeError::Kind(k)),
    }
}

/// Checks an unsealed datagram of cluster `tag` and returns the SWIM packet in it. A sealed
/// datagram is refused ([`EnvelopeError::Sealed`]).
pub fn open_unsealed(tag: u32, data: &[u8]) -> Result<&[u8], EnvelopeError> {
    if check_prefix(data)? == KIND_SEALED {
        return Err(EnvelopeError::Sealed);
    }
    let Some((head, packet)) = data.split_first_chunk::<UNSEALED_OVERHEAD>() else {
        return Err(EnvelopeError::Truncated);
    };
    let theirs = u32::from_be_bytes([head[3], head[4], head[5], head[6]]);
    if theirs != tag {
        return Err(EnvelopeError::OtherCluster(theirs));
    }
    Ok(packet)
}

/// Opens a sealed datagram of cluster `tag` with the key of `ring` it names, decrypting into
/// `scratch`, and returns the SWIM packet in it. An unsealed datagram is refused
/// ([`EnvelopeError::Unsealed`]).
pub fn open_sealed<'a>(
    tag: u32,
    ring: &Keyring,
    data: &[u8],
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8], EnvelopeError> {
    if check_prefix(data)? == KIND_UNSEALED {
        return Err(EnvelopeError::Unsealed);
    }
    if data.len() < SEALED_OVERHEAD {
        return Err(EnvelopeError::Truncated);
    }
    let (head, sealed) = data.split_at(SEALED_HEADER_LEN);
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&head[PREFIX_LEN..PREFIX_LEN + KEY_ID_LEN]);
    let id = KeyId(id);
    let key = ring.opener(id).ok_or(EnvelopeError::ForeignKey(id))?;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&head[PREFIX_LEN + KEY_ID_LEN..]);
    scratch.clear();
    scratch.extend_from_slice(sealed);
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(head),
            scratch,
        )
        .map_err(|_| EnvelopeError::Unauthentic)?;
    let Some((theirs, packet)) = plain.split_first_chunk::<CLUSTER_TAG_LEN>() else {
        return Err(EnvelopeError::Truncated);
    };
    let theirs = u32::from_be_bytes(*theirs);
    if theirs != tag {
        return Err(EnvelopeError::OtherCluster(theirs));
    }
    Ok(packet)
}

/// How one node writes and opens envelopes: its cluster tag, its keyring (none: unsealed), the
/// nonce source it seals with, and a buffer to decrypt into.
#[derive(Debug)]
pub struct Envelope {
    tag: u32,
    keyring: Option<Keyring>,
    nonces: NonceSource,
    scratch: Vec<u8>,
}

impl Envelope {
    /// Unsealed envelopes for `cluster`, with [`NonceSource::system`] ready for a keyring.
    pub fn new(cluster: &str) -> Self {
        Self {
            tag: cluster_tag(cluster),
            keyring: None,
            nonces: NonceSource::system(),
            scratch: Vec::new(),
        }
    }

    /// The cluster tag.
    pub fn tag(&self) -> u32 {
        self.tag
    }

    /// The keyring, if datagrams are sealed.
    pub fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_ref()
    }

    /// The keyring, to rotate keys in place.
    pub fn keyring_mut(&mut self) -> Option<&mut Keyring> {
        self.keyring.as_mut()
    }

    /// Seals with `keyring` from now on (`None`: unsealed), and accepts only datagrams of that
    /// mode.
    pub fn set_keyring(&mut self, keyring: Option<Keyring>) {
        self.keyring = keyring;
    }

    /// Draws nonces from `nonces` from now on.
    pub fn set_nonce_source(&mut self, nonces: NonceSource) {
        self.nonces = nonces;
    }

    /// Bytes added to each packet in the current mode.
    pub fn overhead(&self) -> usize {
        if self.keyring.is_some() {
            SEALED_OVERHEAD
        } else {
            UNSEALED_OVERHEAD
        }
    }

    /// Appends the datagram carrying `packet` to `out`: sealed with the primary key and a fresh
    /// nonce if a keyring is set, unsealed otherwise. `out` is unchanged on error.
    pub fn write(&mut self, packet: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        match &self.keyring {
            None => {
                write_unsealed(self.tag, packet, out);
                Ok(())
            }
            Some(ring) => {
                let nonce = self.nonces.next().ok_or(SealError)?;
                write_sealed(self.tag, ring, nonce, packet, out)
            }
        }
    }

    /// Checks (and opens, if sealed) a datagram and returns the SWIM packet in it.
    pub fn open<'a>(&'a mut self, data: &'a [u8]) -> Result<&'a [u8], EnvelopeError> {
        match &self.keyring {
            None => open_unsealed(self.tag, data),
            Some(ring) => open_sealed(self.tag, ring, data, &mut self.scratch),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::swim::keyring::GossipKey;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn sealed_envelope(key: GossipKey) -> Envelope {
        let mut e = Envelope::new("mesh");
        e.set_keyring(Some(Keyring::new(key)));
        e
    }

    #[test]
    fn unsealed_checks() {
        let tag = cluster_tag("mesh");
        let mut d = Vec::new();
        write_unsealed(tag, &[0xAB], &mut d);
        assert_eq!(hex(&d), "0d0200a100bebcab");
        assert_eq!(open_unsealed(tag, &d), Ok(&[0xAB][..]));
        assert_eq!(
            open_unsealed(cluster_tag("other"), &d),
            Err(EnvelopeError::OtherCluster(tag))
        );
        assert_eq!(open_unsealed(tag, &d[..3]), Err(EnvelopeError::Truncated));
        assert_eq!(open_unsealed(tag, &d[..2]), Err(EnvelopeError::Truncated));
        assert_eq!(
            open_unsealed(tag, b"GET / HTTP"),
            Err(EnvelopeError::BadMagic)
        );
        // The v1 envelope (`MG`) is refused as garbage.
        assert_eq!(
            open_unsealed(tag, b"MG\x01\xa1\x00\xbe\xbc\x00"),
            Err(EnvelopeError::BadMagic)
        );
        d[2] = 7;
        assert_eq!(open_unsealed(tag, &d), Err(EnvelopeError::Kind(7)));
        d[1] = 9;
        assert_eq!(open_unsealed(tag, &d), Err(EnvelopeError::Version(9)));
    }

    /// The test vector of `docs/PROTOCOL.md` §7.1: key `00 01 … 1f`, nonce `00 01 … 0b`, cluster
    /// `mesh`, packet: the Announce of §7.4.
    #[test]
    fn sealed_test_vector() {
        let key = GossipKey::new(std::array::from_fn(|i| i as u8));
        let ring = Keyring::new(key.clone());
        let nonce: [u8; NONCE_LEN] = std::array::from_fn(|i| i as u8);
        let announce = [
            0x04, 0x0a, 0x00, 0x00, 0x02, 0x1f, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x00, 0x00, 0x04,
            0x0a, 0x00, 0x00, 0x01, 0x1f, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x06,
        ];
        assert_eq!(key.id().to_string(), "630dcd29");
        let mut d = Vec::new();
        write_sealed(cluster_tag("mesh"), &ring, nonce, &announce, &mut d).unwrap();
        assert_eq!(d.len(), SEALED_OVERHEAD + announce.len());
        assert_eq!(
            hex(&d[..SEALED_HEADER_LEN]),
            "0d0201630dcd29000102030405060708090a0b"
        );
        assert_eq!(hex(&d), TEST_VECTOR);
        // The same through `Envelope`, with the fixed nonce.
        let mut e = sealed_envelope(key);
        e.set_nonce_source(NonceSource::fixed(nonce));
        let mut d2 = Vec::new();
        e.write(&announce, &mut d2).unwrap();
        assert_eq!(d2, d);
        assert_eq!(e.open(&d), Ok(&announce[..]));
    }

    const TEST_VECTOR: &str = "0d0201630dcd29000102030405060708090a0be60268a7c1efc21b8f5e9d8bb1e9786d83d68534f07f557c3866fa8f1d6900b20110aefca9d1bd361d75d4c7ea8de0c690447ab3e0";

    /// The vector printed in `docs/PROTOCOL.md` is the one checked above.
    #[test]
    fn protocol_md_prints_the_test_vector() {
        let doc = include_str!("../../../docs/PROTOCOL.md");
        let at = doc
            .find("Test vector: key `00 01 02")
            .expect("the vector's paragraph");
        let block = doc[at..].split("```text").nth(1).expect("its block");
        let block = block.split("```").next().unwrap_or_default();
        let printed: String = block
            .split_whitespace()
            .filter(|t| t.len() == 2 && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect();
        assert_eq!(printed, TEST_VECTOR);
    }

    #[test]
    fn mode_mismatch_and_foreign_key() {
        let (a, b) = (GossipKey::new([1; 32]), GossipKey::new([2; 32]));
        let mut sa = sealed_envelope(a.clone());
        let mut sb = sealed_envelope(b.clone());
        let mut plain = Envelope::new("mesh");
        let (mut sealed, mut unsealed) = (Vec::new(), Vec::new());
        sa.write(b"packet", &mut sealed).unwrap();
        plain.write(b"packet", &mut unsealed).unwrap();
        assert_eq!(plain.open(&sealed), Err(EnvelopeError::Sealed));
        assert_eq!(sa.open(&unsealed), Err(EnvelopeError::Unsealed));
        assert_eq!(sb.open(&sealed), Err(EnvelopeError::ForeignKey(a.id())));
        sb.keyring_mut().unwrap().install(a).unwrap();
        assert_eq!(sb.open(&sealed), Ok(&b"packet"[..]));
        // Same key, another cluster: authentic, but not ours.
        let mut other = Envelope::new("other");
        other.set_keyring(Some(Keyring::new(b)));
        let mut d = Vec::new();
        other.write(b"packet", &mut d).unwrap();
        assert_eq!(
            sb.open(&d),
            Err(EnvelopeError::OtherCluster(cluster_tag("other")))
        );
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_refused() {
        let key = GossipKey::new([9; 32]);
        let mut e = sealed_envelope(key);
        let mut d = Vec::new();
        e.write(&[0x5A; 100], &mut d).unwrap();
        for bit in 0..d.len() * 8 {
            let mut m = d.clone();
            m[bit / 8] ^= 1 << (bit % 8);
            let err = e.open(&m).expect_err("a flipped bit must not open");
            let expected = match bit / 8 {
                0 => EnvelopeError::BadMagic,
                1 => EnvelopeError::Version(m[1]),
                // Flipping the kind's low bit makes it unsealed.
                2 if m[2] == KIND_UNSEALED => EnvelopeError::Unsealed,
                2 => EnvelopeError::Kind(m[2]),
                3..=6 => EnvelopeError::ForeignKey(KeyId(m[3..7].try_into().unwrap())),
                _ => EnvelopeError::Unauthentic,
            };
            assert_eq!(err, expected, "bit {bit}");
        }
        for len in 0..d.len() {
            let err = e
                .open(&d[..len])
                .expect_err("a truncated datagram must not open");
            let expected = if len < SEALED_OVERHEAD {
                EnvelopeError::Truncated
            } else {
                EnvelopeError::Unauthentic
            };
            assert_eq!(err, expected, "length {len}");
        }
        assert_eq!(e.open(&d), Ok(&[0x5A; 100][..]));
    }

    proptest! {
        /// Every envelope, sealed or not, has its first byte's 0x40 and 0x80 bits clear, and
        /// opens to what was written.
        #[test]
        fn first_byte_never_looks_like_quic(
            packet in proptest::collection::vec(any::<u8>(), 0..1400),
            key in any::<[u8; 32]>(),
            cluster in "[a-z]{0,12}",
            sealed in any::<bool>(),
        ) {
            let mut e = Envelope::new(&cluster);
            if sealed {
                e.set_keyring(Some(Keyring::new(GossipKey::new(key))));
            }
            let mut d = Vec::new();
            e.write(&packet, &mut d).unwrap();
            prop_assert_eq!(d[0] & 0xC0, 0);
            prop_assert_eq!(d.len(), packet.len() + e.overhead());
            prop_assert_eq!(e.open(&d), Ok(&packet[..]));
        }
    }
}

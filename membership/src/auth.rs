//! Record authentication: the [`RecordAuth`] a core signs its own record with and checks every
//! other record against, so that only a record's owner can speak for it.
//!
//! A record of node X is accepted only with a [`Proof`] that [`RecordAuth::verify`] accepts for
//! X's address, whoever delivered it (X itself, a relay, a sync answer). The core never trusts a
//! record for the messenger's sake.
//!
//! - [`Unsigned`] signs nothing and accepts everything. It serves the standalone plain-UDP
//!   transport, the in-memory tests and the simulator, and offers **no protection**: any member
//!   (and, on plain UDP, anyone who can send to the port) can speak for any other.
//! - The node crate implements [`RecordAuth`] with each node's TLS certificate and key: the proof
//!   is the owner's certificate (which names its advertised address, and chains to the cluster
//!   CA) and its signature over the record.

use std::net::SocketAddr;

use mesh_protocol::{NodeRecord, Proof, SignedRecord};

/// Signs this node's record and verifies others'. Pure computation: no IO, no clock (a
/// verifier that checks certificate validity periods reads the time itself, as TLS does).
///
/// `message` is always [`SignedRecord::signing_input`](mesh_protocol::SignedRecord::signing_input)
/// of a record's bytes: the context label `mesh record v1\0` followed by the record.
pub trait RecordAuth: Send + Sync + 'static {
    /// A proof that this node made `message`.
    fn sign(&self, message: &[u8]) -> Result<Proof, AuthError>;

    /// Checks that `proof` shows the node at `owner` made `message`. An error means the record
    /// must be refused; the core changes nothing because of it.
    fn verify(&self, owner: SocketAddr, message: &[u8], proof: &Proof) -> Result<(), AuthError>;
}

/// Why a record's proof was refused (or our own record could not be signed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The record carries no proof where one is required.
    #[error("record is not signed")]
    Unsigned,
    /// The certificate does not parse or does not chain to the cluster's trust anchor.
    #[error("certificate refused: {0}")]
    Certificate(String),
    /// The certificate is valid but names another address than the record's owner.
    #[error("certificate does not name the record's owner {0}")]
    WrongOwner(SocketAddr),
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// This node could not sign (its key is unusable).
    #[error("signing failed: {0}")]
    Signing(String),
}

/// Signs nothing, accepts everything: **no protection**. For the standalone plain-UDP transport,
/// tests and simulations, where no credentials exist. A cluster that needs members not to speak
/// for each other gives every core a real [`RecordAuth`] (the node crate's).
#[derive(Debug, Clone, Copy, Default)]
pub struct Unsigned;

impl RecordAuth for Unsigned {
    fn sign(&self, _message: &[u8]) -> Result<Proof, AuthError> {
        Ok(Proof::default())
    }

    fn verify(&self, _owner: SocketAddr, _message: &[u8], _proof: &Proof) -> Result<(), AuthError> {
        Ok(())
    }
}

/// `record` encoded and signed by `auth`. If it cannot be signed, the record goes out with an
/// empty proof (peers that check proofs refuse it) and the error is returned beside it.
pub(crate) fn sign_record(
    auth: &dyn RecordAuth,
    record: &NodeRecord,
) -> (SignedRecord, Option<AuthError>) {
    let (bytes, input) = match SignedRecord::encode(record) {
        Ok(b) => b,
        Err(e) => {
            return (
                SignedRecord::new(Vec::new(), Proof::default()),
                Some(AuthError::Signing(e.to_string())),
            )
        }
    };
    match auth.sign(&input) {
        Ok(proof) => (SignedRecord::new(bytes, proof), None),
        Err(e) => (SignedRecord::new(bytes, Proof::default()), Some(e)),
    }
}

/// Checks `signed` (decoded as `record`) against its owner's address.
pub(crate) fn verify_record(
    auth: &dyn RecordAuth,
    record: &NodeRecord,
    signed: &SignedRecord,
) -> Result<(), AuthError> {
    auth.verify(
        record.id.addr,
        &SignedRecord::signing_input(&signed.record),
        &signed.proof,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_signs_nothing_and_accepts_everything() {
        let owner: SocketAddr = "127.0.0.1:1"
            .parse()
            .unwrap_or(SocketAddr::from(([0; 4], 0)));
        assert_eq!(Unsigned.sign(b"x"), Ok(Proof::default()));
        let junk = Proof {
            cert: vec![1],
            sig: vec![2],
        };
        assert_eq!(Unsigned.verify(owner, b"x", &junk), Ok(()));
    }
}

//! Record proofs from the node's TLS credentials: [`TlsRecordAuth`], the
//! [`RecordAuth`] a node's membership core signs its record with and
//! checks every other record against.
//!
//! A proof is the owner's TLS certificate (DER) and its signature over the record's signing input
//! (`docs/PROTOCOL.md` §6.1). A record of address X is accepted only if the certificate chains to
//! the cluster CA, names exactly one advertised address and that address is X, and the signature
//! verifies with the certificate's key. Relays forward the proof unchanged.
//!
//! What it protects depends on the credential mode ([`Credentials`](crate::security::Credentials)):
//!
//! - **Cluster CA**: only the CA issues certificates, each naming one node's address, so no member
//!   can speak for another.
//! - **Cluster key**: every key holder derives the CA key and can mint a certificate for any
//!   address, so a proof keeps out non-members only; members must trust each other.
//!
//! The builder gives every node's membership core one, made from the node's TLS credentials
//! ([`TlsRecordAuth::from_node_tls`]).

use std::net::SocketAddr;

use mesh_membership::{AuthError, RecordAuth};
use mesh_protocol::Proof;
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime,
};
use rustls::sign::{Signer, SigningKey};
use rustls::SignatureScheme;

use crate::security::{addr_dns_name, peer_addrs, NodeTls, SecurityError};

/// Signature schemes this node signs with, in order of preference (the node's key decides).
const SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ED25519,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
];

/// Algorithms a proof may use, for the certificate chain and for the record signature: the
/// counterparts of [`SCHEMES`], and what webpki accepts for certificate signatures.
static ALGS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::ring::ED25519,
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
];

/// A node's record signer and verifier, from its TLS certificate and key and the cluster CA.
pub struct TlsRecordAuth {
    cert: CertificateDer<'static>,
    signer: Box<dyn Signer>,
    ca: TrustAnchor<'static>,
}

impl std::fmt::Debug for TlsRecordAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsRecordAuth")
            .field("names", &peer_addrs(&self.cert))
            .finish_non_exhaustive()
    }
}

impl TlsRecordAuth {
    /// From the cluster CA certificate and this node's certificate and private key (as
    /// [`Credentials::Ca`](crate::security::Credentials::Ca) holds them).
    pub fn new(
        ca_cert: &CertificateDer<'_>,
        cert: CertificateDer<'static>,
        key: &PrivateKeyDer<'_>,
    ) -> Result<Self, SecurityError> {
        let key = rustls::crypto::ring::sign::any_supported_type(key)?;
        Self::with_key(ca_cert, cert, key.as_ref())
    }

    /// From the cluster CA certificate, certificate and key this node uses in TLS
    /// (the ones [`Credentials::tls`](crate::security::Credentials::tls) made, in either mode).
    pub fn from_node_tls(tls: &NodeTls) -> Result<Self, SecurityError> {
        let certified = tls
            .client
            .client_auth_cert_resolver
            .resolve(&[], SCHEMES)
            .ok_or_else(|| {
                SecurityError::Load("the TLS configuration has no certificate".into())
            })?;
        let cert = certified.cert.first().cloned().ok_or_else(|| {
            SecurityError::Load("the TLS configuration has no certificate".into())
        })?;
        Self::with_key(&tls.ca_cert, cert, certified.key.as_ref())
    }

    fn with_key(
        ca_cert: &CertificateDer<'_>,
        cert: CertificateDer<'static>,
        key: &dyn SigningKey,
    ) -> Result<Self, SecurityError> {
        let signer = key.choose_scheme(SCHEMES).ok_or_else(|| {
            SecurityError::Load("the node's key signs with no supported scheme".into())
        })?;
        let ca = webpki::anchor_from_trusted_cert(ca_cert)
            .map_err(|e| SecurityError::Load(format!("CA certificate: {e}")))?
            .to_owned();
        Ok(Self { cert, signer, ca })
    }

    /// The certificate proofs carry (DER): 312 bytes for an Ed25519 node certificate of one
    /// IPv4 address.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }
}

impl RecordAuth for TlsRecordAuth {
    fn sign(&self, message: &[u8]) -> Result<Proof, AuthError> {
        let sig = self
            .signer
            .sign(message)
            .map_err(|e| AuthError::Signing(e.to_string()))?;
        Ok(Proof {
            cert: self.cert.to_vec(),
            sig,
        })
    }

    fn verify(&self, owner: SocketAddr, message: &[u8], proof: &Proof) -> Result<(), AuthError> {
        if proof.cert.is_empty() || proof.sig.is_empty() {
            return Err(AuthError::Unsigned);
        }
        let der = CertificateDer::from(proof.cert.as_slice());
        let ee = webpki::EndEntityCert::try_from(&der)
            .map_err(|e| AuthError::Certificate(e.to_string()))?;
        ee.verify_for_usage(
            ALGS,
            std::slice::from_ref(&self.ca),
            &[],
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| AuthError::Certificate(e.to_string()))?;
        // Exactly one advertised address, the owner's (compared as certificates name it: without
        // an IPv6 scope).
        match peer_addrs(&der)[..] {
            [named] if addr_dns_name(named) == addr_dns_name(owner) => {}
            _ => return Err(AuthError::WrongOwner(owner)),
        }
        if ALGS
            .iter()
            .any(|alg| ee.verify_signature(*alg, message, &proof.sig).is_ok())
        {
            Ok(())
        } else {
            Err(AuthError::BadSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use std::sync::Arc;

    use mesh_membership::{Membership, MembershipConfig};
    use mesh_protocol::{MemberId, NodeRecord, SignedRecord, SyncRequest};

    use super::*;
    use crate::security::{CertificateAuthority, Credentials};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn auth(ca: &CertificateAuthority, at: SocketAddr) -> TlsRecordAuth {
        let node = ca.issue("n", &[at]).unwrap();
        TlsRecordAuth::new(ca.cert_der(), node.cert, &node.key).unwrap()
    }

    fn signing_input(port: u16, version: u64) -> Vec<u8> {
        let mut r = NodeRecord::new(MemberId::new(addr(port), 1), "n");
        r.version = version;
        SignedRecord::encode(&r).unwrap().1
    }

    #[test]
    fn a_proof_verifies_for_its_owner_only() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let a = auth(&ca, addr(1));
        let b = auth(&ca, addr(2));
        let msg = signing_input(1, 3);
        let proof = a.sign(&msg).unwrap();
        assert_eq!(proof.sig.len(), 64, "Ed25519");
        assert!(
            proof.cert.len() < 600,
            "certificate of {} bytes",
            proof.cert.len()
        );
        // Anyone holding the CA checks it, for A's address only.
        assert_eq!(b.verify(addr(1), &msg, &proof), Ok(()));
        assert_eq!(
            b.verify(addr(2), &msg, &proof),
            Err(AuthError::WrongOwner(addr(2)))
        );
        // Another message, no proof, a made-up signature, garbage for a certificate.
        assert_eq!(
            b.verify(addr(1), &signing_input(1, 4), &proof),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            b.verify(addr(1), &msg, &Proof::default()),
            Err(AuthError::Unsigned)
        );
        let forged = Proof {
            cert: proof.cert.clone(),
            sig: b.sign(&msg).unwrap().sig,
        };
        assert_eq!(
            b.verify(addr(1), &msg, &forged),
            Err(AuthError::BadSignature)
        );
        let junk = Proof {
            cert: vec![0x30, 0x03, 1, 2, 3],
            sig: proof.sig.clone(),
        };
        assert!(matches!(
            b.verify(addr(1), &msg, &junk),
            Err(AuthError::Certificate(_))
        ));
    }

    #[test]
    fn a_certificate_of_another_ca_or_for_several_addresses_is_refused() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let other = CertificateAuthority::generate("another CA").unwrap();
        let verifier = auth(&ca, addr(2));
        let msg = signing_input(1, 1);
        let outsider = auth(&other, addr(1));
        assert!(matches!(
            verifier.verify(addr(1), &msg, &outsider.sign(&msg).unwrap()),
            Err(AuthError::Certificate(_))
        ));
        let node = ca.issue("n", &[addr(1), addr(3)]).unwrap();
        let two = TlsRecordAuth::new(ca.cert_der(), node.cert, &node.key).unwrap();
        assert_eq!(
            verifier.verify(addr(1), &msg, &two.sign(&msg).unwrap()),
            Err(AuthError::WrongOwner(addr(1)))
        );
    }

    #[test]
    fn the_certificate_and_key_of_the_tls_configuration_sign_records() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let node = ca.issue("n", &[addr(1)]).unwrap();
        let creds = Credentials::ca(
            ca.cert_der().clone(),
            node.cert,
            node.key,
            crate::security::GossipSecret::from_bytes([5; 32]),
        );
        let tls = creds.tls("mesh", addr(1)).unwrap();
        let a = TlsRecordAuth::from_node_tls(&tls).unwrap();
        let msg = signing_input(1, 1);
        assert_eq!(
            auth(&ca, addr(2)).verify(addr(1), &msg, &a.sign(&msg).unwrap()),
            Ok(())
        );
    }

    /// Two cores with TLS proofs: B accepts A's record pushed by anyone, refuses a forgery of it
    /// signed by L, and gossip items a proof would have to fit in are measured.
    #[test]
    fn membership_cores_accept_only_records_their_owners_signed() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let cfg = MembershipConfig::local();
        let now = Instant::now();
        let mut b = Membership::new(cfg.clone(), MemberId::new(addr(2), 1), "b", 2);
        b.set_record_auth(Arc::new(auth(&ca, addr(2))));
        let mut a = Membership::new(cfg, MemberId::new(addr(1), 1), "a", 1);
        a.set_record_auth(Arc::new(auth(&ca, addr(1))));
        a.update_record(now, |r| r.name = "a, signed".into());
        // A's own record, as A signed it (what A's pushes and answers carry).
        let task = {
            a.join(now, &[addr(2)]);
            let mut t = now;
            loop {
                t += Duration::from_millis(10);
                a.handle_timeout(t);
                while let Some(x) = a.poll_transmit() {
                    b.handle_datagram(t, addr(1), &x.data);
                }
                while let Some(x) = b.poll_transmit() {
                    a.handle_datagram(t, addr(2), &x.data);
                }
                if let Some(task) = a.poll_sync() {
                    break task;
                }
            }
        };
        let signed = task.request.records[0].clone();
        // The size a signed record would take in a gossip item: record plus proof.
        assert!(signed.size() > 400, "{} bytes", signed.size());
        // Pushed by a third party (a relay): accepted.
        let _ = b.handle_sync_request(
            now,
            addr(3),
            SyncRequest {
                digests: vec![],
                full: false,
                records: vec![signed.clone()],
            },
        );
        assert_eq!(b.stats().records_forged, 0);
        assert!(b.stats().records_applied >= 1);
        // A forgery of a newer A, signed by L with a certificate of its own: refused.
        let mut forged = a.own_record().clone();
        forged.version += 1;
        forged.name = "forged".into();
        let (bytes, input) = SignedRecord::encode(&forged).unwrap();
        let l = auth(&ca, addr(3));
        let _ = b.handle_sync_request(
            now,
            addr(3),
            SyncRequest {
                digests: vec![],
                full: false,
                records: vec![SignedRecord::new(bytes, l.sign(&input).unwrap())],
            },
        );
        assert_eq!(b.stats().records_forged, 1);
    }
}

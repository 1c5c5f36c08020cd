//! Shared by the integration tests: a toy [`RecordAuth`] keyed per owner address, and a small
//! cluster of sans-IO cores wired by hand on a virtual clock, where a test can answer one
//! member's syncs itself (a liar).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_membership::{AuthError, Membership, MembershipConfig, RecordAuth};
use mesh_protocol::{
    EndpointInfo, MemberId, NodeRecord, Proof, ServiceInfo, SignedRecord, SyncRequest, SyncResponse,
};

/// A toy signer: the "certificate" is the owner's address as text, the "signature" a keyed hash
/// of the owner's address and the message under a secret only this type knows. A node holding
/// `ToyAuth` for its own address can sign only for that address; a verifier checks the
/// certificate names the record's owner and the hash matches. (Not cryptography: a stand-in for
/// the node crate's certificates, with the same failure modes.)
#[derive(Debug, Clone, Copy)]
pub struct ToyAuth {
    pub me: SocketAddr,
}

const SECRET: u64 = 0x5eed_0f7e_5700;

pub fn toy_sig(owner: SocketAddr, message: &[u8]) -> Vec<u8> {
    (0..4u64)
        .flat_map(|salt| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (SECRET, salt, owner, message).hash(&mut h);
            h.finish().to_be_bytes()
        })
        .collect()
}

impl RecordAuth for ToyAuth {
    fn sign(&self, message: &[u8]) -> Result<Proof, AuthError> {
        Ok(Proof {
            cert: self.me.to_string().into_bytes(),
            sig: toy_sig(self.me, message),
        })
    }

    fn verify(&self, owner: SocketAddr, message: &[u8], proof: &Proof) -> Result<(), AuthError> {
        if proof.is_empty() {
            return Err(AuthError::Unsigned);
        }
        let named: SocketAddr = std::str::from_utf8(&proof.cert)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| AuthError::Certificate("not an address".into()))?;
        if named != owner {
            return Err(AuthError::WrongOwner(owner));
        }
        if proof.sig != toy_sig(owner, message) {
            return Err(AuthError::BadSignature);
        }
        Ok(())
    }
}

pub fn addr(i: usize) -> SocketAddr {
    format!("127.0.0.1:{}", 7001 + i).parse().unwrap()
}

/// Encodes `record` and signs it as `signer` would.
pub fn signed_by(signer: SocketAddr, record: &NodeRecord) -> SignedRecord {
    let (bytes, input) = SignedRecord::encode(record).unwrap();
    SignedRecord::new(bytes, ToyAuth { me: signer }.sign(&input).unwrap())
}

/// Answers a liar's syncs instead of its core: given the requester and the request.
pub type Answer = Box<dyn FnMut(SocketAddr, &SyncRequest) -> SyncResponse>;

/// `n` cores on addresses `addr(0..n)` (node 0 serves `Greeter.Hello`, not idempotent), each with
/// a [`ToyAuth`] for its own address, joined through node 0 and converged.
pub struct Cluster {
    pub nodes: Vec<Membership>,
    pub now: Instant,
    /// Syncs sent to these nodes are answered by the closure, not by their core.
    pub liars: BTreeMap<usize, Answer>,
    /// Every sync performed: (requester, peer).
    pub syncs: Vec<(usize, usize)>,
}

pub fn greeter() -> ServiceInfo {
    ServiceInfo {
        name: "Greeter".into(),
        endpoints: vec![EndpointInfo {
            name: "Hello".into(),
            idempotent: false,
            ..Default::default()
        }],
        ..Default::default()
    }
}

impl Cluster {
    pub fn new(n: usize) -> Self {
        Self::with_config(n, MembershipConfig::local())
    }

    /// As [`new`](Self::new), with another configuration (converged within 3 virtual seconds).
    pub fn with_config(n: usize, cfg: MembershipConfig) -> Self {
        let mut nodes: Vec<Membership> = (0..n)
            .map(|i| {
                let mut m = Membership::new(
                    cfg.clone(),
                    MemberId::new(addr(i), 1),
                    format!("n{i}"),
                    i as u64 + 1,
                );
                m.set_record_auth(Arc::new(ToyAuth { me: addr(i) }));
                m
            })
            .collect();
        let now = Instant::now();
        nodes[0].update_record(now, |r| r.services.push(greeter()));
        for node in nodes.iter_mut().skip(1) {
            node.join(now, &[addr(0)]);
        }
        let mut c = Self {
            nodes,
            now,
            liars: BTreeMap::new(),
            syncs: Vec::new(),
        };
        c.run(Duration::from_secs(3));
        for node in &c.nodes {
            assert_eq!(node.nodes_of("Greeter").len(), 1, "converged");
            assert_eq!(node.num_active(), n);
        }
        c
    }

    fn index(&self, a: SocketAddr) -> Option<usize> {
        (0..self.nodes.len()).find(|&k| addr(k) == a)
    }

    /// Advances 10 ms: timers, then datagrams and syncs until quiet.
    pub fn step(&mut self) {
        self.now += Duration::from_millis(10);
        let now = self.now;
        for node in &mut self.nodes {
            node.handle_timeout(now);
        }
        for _ in 0..4 {
            for i in 0..self.nodes.len() {
                while let Some(t) = self.nodes[i].poll_transmit() {
                    if let Some(to) = self.index(t.dst) {
                        self.nodes[to].handle_datagram(now, addr(i), &t.data);
                    }
                }
                while let Some(s) = self.nodes[i].poll_sync() {
                    let Some(to) = self.index(s.peer) else {
                        self.nodes[i].handle_sync_response::<String>(
                            now,
                            s.peer,
                            Err("unreachable".into()),
                        );
                        continue;
                    };
                    self.syncs.push((i, to));
                    let resp = match self.liars.get_mut(&to) {
                        Some(answer) => answer(addr(i), &s.request),
                        None => self.nodes[to].handle_sync_request(now, addr(i), s.request),
                    };
                    self.nodes[i].handle_sync_response::<String>(now, s.peer, Ok(resp));
                }
            }
        }
    }

    pub fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    /// What node `i` believes: visible records and every member's state.
    pub fn view(&self, i: usize) -> String {
        let n = &self.nodes[i];
        let members: Vec<_> = n.members().iter().map(|m| (m.id, m.state)).collect();
        format!("{:?}\n{members:?}", n.visible_records())
    }
}

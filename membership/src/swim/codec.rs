//! The member identity foca runs on ([`SwimId`]) and [`SwimCodec`], the binary codec for SWIM
//! headers and member updates. Decoders check lengths before every read and never panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut};
use foca::{Codec, Header, Incarnation, Member, Message, State};
use mesh_protocol::MemberId;

/// A newtype so foca's `Identity` can be implemented for the wire type [`MemberId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SwimId(pub MemberId);

impl foca::Identity for SwimId {
    type Addr = SocketAddr;

    /// A renewed identity is the next generation at the same address.
    fn renew(&self) -> Option<Self> {
        Some(SwimId(MemberId::new(
            self.0.addr,
            self.0.generation.checked_add(1)?,
        )))
    }

    fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// Between two lives of the same address, the later generation wins: a restarted node
    /// replaces its dead predecessor at once, and the predecessor can never come back.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.0.generation > adversary.0.generation
    }
}

/// Why SWIM bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwimDecodeError {
    /// The packet ended early.
    #[error("truncated SWIM packet")]
    Truncated,
    /// A tag byte outside the defined range.
    #[error("invalid {what} tag {tag}")]
    BadTag {
        /// Which field.
        what: &'static str,
        /// The value found.
        tag: u8,
    },
    /// Not enough room in the packet to encode (foca handles this by sending what fits).
    #[error("no room in packet")]
    NoRoom,
}

/// foca codec: a compact, fixed binary layout (see `docs/PROTOCOL.md`, "Gossip datagrams").
#[derive(Debug, Clone, Copy, Default)]
pub struct SwimCodec;

const ID_V4_LEN: usize = 1 + 4 + 2 + 8;
const ID_V6_LEN: usize = 1 + 16 + 2 + 8;

fn id_len(id: &MemberId) -> usize {
    match id.addr {
        SocketAddr::V4(_) => ID_V4_LEN,
        SocketAddr::V6(_) => ID_V6_LEN,
    }
}

pub(super) fn put_id(id: &MemberId, out: &mut Vec<u8>) {
    match id.addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&id.addr.port().to_be_bytes());
    out.extend_from_slice(&id.generation.to_be_bytes());
}

fn need(buf: &impl Buf, n: usize) -> Result<(), SwimDecodeError> {
    if buf.remaining() < n {
        Err(SwimDecodeError::Truncated)
    } else {
        Ok(())
    }
}

pub(super) fn get_u8(buf: &mut impl Buf) -> Result<u8, SwimDecodeError> {
    buf.try_get_u8().map_err(|_| SwimDecodeError::Truncated)
}

fn get_u16(buf: &mut impl Buf) -> Result<u16, SwimDecodeError> {
    buf.try_get_u16().map_err(|_| SwimDecodeError::Truncated)
}

pub(super) fn get_u64(buf: &mut impl Buf) -> Result<u64, SwimDecodeError> {
    buf.try_get_u64().map_err(|_| SwimDecodeError::Truncated)
}

/// Decodes a member id in the layout of [`SwimCodec`].
pub fn get_id(buf: &mut impl Buf) -> Result<MemberId, SwimDecodeError> {
    let ip = match get_u8(buf)? {
        4 => {
            need(buf, 4)?;
            let mut o = [0; 4];
            buf.copy_to_slice(&mut o);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        6 => {
            need(buf, 16)?;
            let mut o = [0; 16];
            buf.copy_to_slice(&mut o);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        tag => {
            return Err(SwimDecodeError::BadTag {
                what: "address family",
                tag,
            })
        }
    };
    let port = get_u16(buf)?;
    let generation = get_u64(buf)?;
    Ok(MemberId::new(SocketAddr::new(ip, port), generation))
}

fn encode_header(h: &Header<SwimId>) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 * ID_V6_LEN + 4 + ID_V6_LEN);
    put_id(&h.src.0, &mut out);
    out.extend_from_slice(&h.src_incarnation.to_be_bytes());
    put_id(&h.dst.0, &mut out);
    // Tag, then the message's fields: a probe number, or a member id and a probe number.
    let (tag, id, probe): (u8, Option<&SwimId>, Option<u8>) = match &h.message {
        Message::Ping(n) => (0, None, Some(*n)),
        Message::Ack(n) => (1, None, Some(*n)),
        Message::PingReq {
            target,
            probe_number,
        } => (2, Some(target), Some(*probe_number)),
        Message::IndirectPing {
            origin,
            probe_number,
        } => (3, Some(origin), Some(*probe_number)),
        Message::IndirectAck {
            target,
            probe_number,
        } => (4, Some(target), Some(*probe_number)),
        Message::ForwardedAck {
            origin,
            probe_number,
        } => (5, Some(origin), Some(*probe_number)),
        Message::Announce => (6, None, None),
        Message::Feed => (7, None, None),
        Message::Gossip => (8, None, None),
        Message::Broadcast => (9, None, None),
        Message::TurnUndead => (10, None, None),
    };
    out.push(tag);
    if let Some(id) = id {
        put_id(&id.0, &mut out);
    }
    out.extend(probe);
    out
}

fn decode_header(buf: &mut impl Buf) -> Result<Header<SwimId>, SwimDecodeError> {
    let src = SwimId(get_id(buf)?);
    let src_incarnation = get_u16(buf)?;
    let dst = SwimId(get_id(buf)?);
    let tag = get_u8(buf)?;
    let message = match tag {
        0 => Message::Ping(get_u8(buf)?),
        1 => Message::Ack(get_u8(buf)?),
        2..=5 => {
            let id = SwimId(get_id(buf)?);
            let probe_number = get_u8(buf)?;
            match tag {
                2 => Message::PingReq {
                    target: id,
                    probe_number,
                },
                3 => Message::IndirectPing {
                    origin: id,
                    probe_number,
                },
                4 => Message::IndirectAck {
                    target: id,
                    probe_number,
                },
                _ => Message::ForwardedAck {
                    origin: id,
                    probe_number,
                },
            }
        }
        6 => Message::Announce,
        7 => Message::Feed,
        8 => Message::Gossip,
        9 => Message::Broadcast,
        10 => Message::TurnUndead,
        tag => {
            return Err(SwimDecodeError::BadTag {
                what: "message",
                tag,
            })
        }
    };
    Ok(Header {
        src,
        src_incarnation,
        dst,
        message,
    })
}

/// Decodes just the source of a SWIM packet (to check it against the datagram's origin).
pub fn decode_header_src(mut packet: &[u8]) -> Result<MemberId, SwimDecodeError> {
    decode_header(&mut packet).map(|h| h.src.0)
}

impl Codec<SwimId> for SwimCodec {
    type Error = SwimDecodeError;

    fn encode_header(
        &mut self,
        header: &Header<SwimId>,
        mut buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        let bytes = encode_header(header);
        if buf.remaining_mut() < bytes.len() {
            return Err(SwimDecodeError::NoRoom);
        }
        buf.put_slice(&bytes);
        Ok(())
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<SwimId>, Self::Error> {
        decode_header(&mut buf)
    }

    fn encode_member(
        &mut self,
        member: &Member<SwimId>,
        mut buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        let id = &member.id().0;
        if buf.remaining_mut() < id_len(id) + 3 {
            return Err(SwimDecodeError::NoRoom);
        }
        let mut out = Vec::with_capacity(ID_V6_LEN + 3);
        put_id(id, &mut out);
        out.extend_from_slice(&member.incarnation().to_be_bytes());
        out.push(match member.state() {
            State::Alive => 0,
            State::Suspect => 1,
            State::Down => 2,
        });
        buf.put_slice(&out);
        Ok(())
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<SwimId>, Self::Error> {
        let id = SwimId(get_id(&mut buf)?);
        let incarnation: Incarnation = get_u16(&mut buf)?;
        let state = match get_u8(&mut buf)? {
            0 => State::Alive,
            1 => State::Suspect,
            2 => State::Down,
            tag => return Err(SwimDecodeError::BadTag { what: "state", tag }),
        };
        Ok(Member::new(id, incarnation, state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(port: u16, generation: u64) -> SwimId {
        SwimId(MemberId::new(
            SocketAddr::from(([127, 0, 0, 1], port)),
            generation,
        ))
    }

    #[test]
    fn header_round_trip_every_message() {
        let v6 = SwimId(MemberId::new("[::1]:9".parse().unwrap(), u64::MAX));
        let msgs = [
            Message::Ping(1),
            Message::Ack(2),
            Message::PingReq {
                target: v6,
                probe_number: 3,
            },
            Message::IndirectPing {
                origin: id(5, 1),
                probe_number: 4,
            },
            Message::IndirectAck {
                target: id(6, 1),
                probe_number: 5,
            },
            Message::ForwardedAck {
                origin: v6,
                probe_number: 6,
            },
            Message::Announce,
            Message::Feed,
            Message::Gossip,
            Message::Broadcast,
            Message::TurnUndead,
        ];
        for message in msgs {
            let h = Header {
                src: id(1, 7),
                src_incarnation: 9,
                dst: v6,
                message,
            };
            let bytes = encode_header(&h);
            let mut rd = &bytes[..];
            assert_eq!(decode_header(&mut rd).unwrap(), h);
            assert!(rd.is_empty());
            // Every strict prefix is Truncated, never a panic.
            for cut in 0..bytes.len() {
                assert_eq!(
                    decode_header(&mut &bytes[..cut]),
                    Err(SwimDecodeError::Truncated)
                );
            }
        }
    }

    #[test]
    fn member_round_trip_and_no_room() {
        let mut c = SwimCodec;
        for state in [State::Alive, State::Suspect, State::Down] {
            let m = Member::new(id(3, 2), 5, state);
            let mut out = Vec::new();
            c.encode_member(&m, &mut out).unwrap();
            assert_eq!(c.decode_member(&out[..]).unwrap(), m);
        }
        let mut small = [0u8; 4];
        assert_eq!(
            c.encode_member(&Member::alive(id(3, 2)), &mut small[..]),
            Err(SwimDecodeError::NoRoom)
        );
        assert!(matches!(
            c.decode_member(&[4, 127, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9][..]),
            Err(SwimDecodeError::BadTag { what: "state", .. })
        ));
    }

    #[test]
    fn renewed_identity_wins_and_old_loses() {
        use foca::Identity;
        let a = id(1, 10);
        let b = a.renew().unwrap();
        assert!(b.win_addr_conflict(&a));
        assert!(!a.win_addr_conflict(&b));
        assert_eq!(a.addr(), b.addr());
    }
}

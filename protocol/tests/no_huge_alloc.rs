//! A length a peer declares must not turn into an allocation: a frame header, a MessagePack array or
//! string, or a header field declaring 4 GiB costs us (about) the bytes actually received.
//!
//! A counting global allocator records the peak of live heap bytes; each operation is measured
//! from its own starting point. The counter is process-wide and the test harness runs tests on
//! several threads, so every test here holds `SERIAL` while it measures.

// `GlobalAlloc` is an unsafe trait with unsafe methods: implementing it is the only way to count
// allocations, so this file opts out of the workspace's `unsafe_code = "deny"`. The impl only
// forwards to `System` and updates two atomics.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::BytesMut;
use mesh_protocol::{
    from_msgpack, CallHeader, CodecError, ContentType, FrameDecoder, FrameError,
    DEFAULT_MAX_FRAME_LEN,
};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Ordering::SeqCst) + by;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

fn shrank(by: usize) {
    CURRENT.fetch_sub(by, Ordering::SeqCst);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so `System`'s
// guarantees carry over; the bookkeeping neither allocates nor touches the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `GlobalAlloc::alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through us) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` was allocated by `System` (through us) with `layout`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Held by every test while it measures, so tests do not see each other's allocations.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `f` and returns its result and the peak of live heap bytes above the level at its start.
/// The result is returned (not dropped inside), so whatever it holds counts too.
fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start = CURRENT.load(Ordering::SeqCst);
    PEAK.store(start, Ordering::SeqCst);
    let r = f();
    let peak = PEAK.load(Ordering::SeqCst);
    (r, peak.saturating_sub(start))
}

/// The budget for refusing a hostile 4 GiB declaration: far less than what was declared, and
/// about what a small error message and a decoder's scratch buffer need.
const BUDGET: usize = 64 * 1024;

#[test]
fn declared_lengths_do_not_allocate() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut report = Vec::new();

    // 0. The counter works: a 1 MiB vector shows up as at least 1 MiB.
    let (v, peak) = peak_during(|| vec![1u8; 1 << 20]);
    assert!(
        peak >= 1 << 20,
        "counter saw only {peak} bytes of a 1 MiB Vec"
    );
    drop(v);

    // 1. A frame header declaring 0xFFFF_FFFF bytes, followed by a few payload bytes.
    let mut buf = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0xFF, 0x02, b'a', b'b', b'c'][..]);
    let decoder = FrameDecoder::default();
    let (got, peak) = peak_during(|| decoder.decode(&mut buf));
    assert_eq!(
        got,
        Err(FrameError::TooLarge {
            len: u32::MAX,
            max: DEFAULT_MAX_FRAME_LEN
        })
    );
    assert_eq!(buf.len(), 8, "decoder consumed bytes of a refused frame");
    report.push(("FrameDecoder::decode(len=0xFFFF_FFFF)", peak));
    assert!(peak < BUDGET, "frame decode peaked at {peak} bytes");

    // 2. MessagePack array32 declaring u32::MAX elements, decoded as a generic value (which does
    //    not pre-allocate), also nested 127 deep (just inside the depth limit).
    let bytes = [0xdd, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02];
    let (got, peak) = peak_during(|| from_msgpack::<serde_json::Value>(&bytes));
    assert!(matches!(got, Err(CodecError::Decode(_))), "{got:?}");
    report.push(("from_msgpack::<Value>(array32 u32::MAX)", peak));
    assert!(
        peak < BUDGET,
        "array32 decode into Value peaked at {peak} bytes"
    );
    let nested = [0xdd, 0xff, 0xff, 0xff, 0xff].repeat(127);
    let (got, peak) = peak_during(|| from_msgpack::<serde_json::Value>(&nested));
    assert!(matches!(got, Err(CodecError::Decode(_))), "{got:?}");
    report.push(("from_msgpack::<Value>(127 nested array32 u32::MAX)", peak));
    assert!(
        peak < BUDGET,
        "nested array32 decode peaked at {peak} bytes"
    );

    // 2b. The same array32 decoded into a `Vec<u64>`: serde would pre-allocate 1 MiB from the
    //     declared length; the declared-length check refuses it first.
    let (got, peak) = peak_during(|| from_msgpack::<Vec<u64>>(&bytes));
    assert!(matches!(got, Err(CodecError::Decode(_))), "{got:?}");
    report.push(("from_msgpack::<Vec<u64>>(array32 u32::MAX)", peak));
    assert!(
        peak < BUDGET,
        "array32 decode into Vec<u64> peaked at {peak} bytes"
    );

    // 3. MessagePack str32 declaring u32::MAX bytes, followed by a few.
    let bytes = [0xdb, 0xff, 0xff, 0xff, 0xff, b'a', b'b', b'c'];
    let (got, peak) = peak_during(|| from_msgpack::<String>(&bytes));
    assert!(matches!(got, Err(CodecError::Decode(_))), "{got:?}");
    report.push(("from_msgpack::<String>(str32 u32::MAX)", peak));
    assert!(peak < BUDGET, "str32 decode peaked at {peak} bytes");

    // 3b. The same through ContentType::MsgPack, and bin32.
    let (got, peak) = peak_during(|| ContentType::MsgPack.decode::<String>(&bytes));
    assert!(matches!(got, Err(CodecError::Decode(_))), "{got:?}");
    report.push(("ContentType::MsgPack.decode::<String>(str32)", peak));
    assert!(
        peak < BUDGET,
        "ContentType str32 decode peaked at {peak} bytes"
    );
    let bin = [0xc6, 0xff, 0xff, 0xff, 0xff, 1, 2, 3];
    let (got, peak) = peak_during(|| from_msgpack::<serde_json::Value>(&bin));
    assert!(got.is_err(), "{got:?}");
    report.push(("from_msgpack::<Value>(bin32 u32::MAX)", peak));
    assert!(peak < BUDGET, "bin32 decode peaked at {peak} bytes");

    // 4. A call header whose `service` is a str32 declaring 4 GiB - 1.
    let mut header = vec![0x82]; // fixmap(2)
    header.extend_from_slice(b"\xa2id\x01"); // "id": 1
    header.extend_from_slice(b"\xa7service\xdb\xff\xff\xff\xff"); // "service": str32 u32::MAX
    header.extend_from_slice(b"Greeter");
    let (got, peak) = peak_during(|| CallHeader::decode(&header));
    assert!(matches!(got, Err(CodecError::Decode(_))), "{got:?}");
    report.push(("CallHeader::decode(service=str32 u32::MAX)", peak));
    assert!(peak < BUDGET, "call header decode peaked at {peak} bytes");

    // 5. Containers whose elements are themselves declared huge: a map32 declaring u32::MAX
    //    entries decoded as a generic value.
    let map = [0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, b'k', 0xc0];
    let (got, peak) = peak_during(|| from_msgpack::<serde_json::Value>(&map));
    assert!(got.is_err(), "{got:?}");
    report.push(("from_msgpack::<Value>(map32 u32::MAX)", peak));
    assert!(peak < BUDGET, "map32 decode peaked at {peak} bytes");

    for (what, peak) in &report {
        println!("{what}: peak {peak} bytes");
    }
}

/// The budget of the test above applied to a declared array decoded into a `Vec`. Fails today:
/// `from_msgpack::<Vec<u64>>` on the seven bytes `dd ff ff ff ff 01 02` (array32 declaring
/// u32::MAX elements, then two) must fail without allocating: rmp-serde passes the declared length
/// to serde as the sequence's size hint and serde's `Vec` visitor pre-allocates
/// `min(hint, 1 MiB / size_of::<T>())` elements, so `from_msgpack` checks declared lengths against
/// the input first.
#[test]
fn declared_array_length_into_vec_does_not_preallocate() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bytes = [0xdd, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02];
    let (got, peak) = peak_during(|| from_msgpack::<Vec<u64>>(&bytes));
    assert!(matches!(got, Err(CodecError::Decode(_))), "{got:?}");
    assert!(
        peak < BUDGET,
        "array32 decode into Vec<u64> peaked at {peak} bytes for a {}-byte input",
        bytes.len()
    );
    // Same through a struct field, as a request body would be decoded.
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        items: Vec<String>,
    }
    let body = b"\x81\xa5items\xdd\xff\xff\xff\xff";
    let (got, peak) = peak_during(|| ContentType::MsgPack.decode::<Body>(body));
    assert!(matches!(got, Err(CodecError::Decode(_))), "{got:?}");
    assert!(
        peak < BUDGET,
        "Body {{ items: array32 }} decode peaked at {peak} bytes for a {}-byte input",
        body.len()
    );
}

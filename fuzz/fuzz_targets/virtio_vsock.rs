//! virtio-vsock: transmit chains (a packet header with fields the input picks, mostly near
//! valid, then payload; buffers wrong now and then), receive buffers, a host listener at
//! `PATH_52` for the guest's connections, and host programs that connect to PATH and write what
//! the input says (a `CONNECT` line or not, bytes after it), served by the real device through
//! the real transport and event loop. Checks: no panic; only posted chains come back and no
//! receive chain is claimed to hold more than its buffers; the last packet the guest received
//! is a well-formed one from the host to the guest's CID; the host listener never gets more
//! bytes than the guest's RW packets carried.
#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use devices::virtio::vsock::packet::{Header, HDR_LEN};
use devices::virtio::vsock::{Vsock, MAX_PKT_LEN};
use libfuzzer_sys::arbitrary::{Result as AResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};
use vmm_fuzz::*;

const CID: u64 = 3;
/// The guest port with a host listener behind it (`PATH_52`).
const LISTENED: u32 = 52;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTQ_DESC_F_INDIRECT: u16 = 4;

/// A field from a few likely values, or anything.
fn pick<'a, T: Copy>(
    u: &mut Unstructured<'a>,
    likely: &[T],
    any: impl FnOnce(&mut Unstructured<'a>) -> AResult<T>,
) -> AResult<T> {
    let i = u.int_in_range(0..=likely.len())?;
    match likely.get(i) {
        Some(&v) => Ok(v),
        None => any(u),
    }
}

fn header(u: &mut Unstructured, payload: usize) -> AResult<Header> {
    Ok(Header {
        src_cid: pick(u, &[CID, CID, CID, 2], |u| u.arbitrary())?,
        dst_cid: pick(u, &[2, 2, 2, CID], |u| u.arbitrary())?,
        src_port: pick(u, &[1000, 1001, 1002], |u| u.arbitrary())?,
        dst_port: pick(u, &[LISTENED, LISTENED, 53, 1 << 30], |u| u.arbitrary())?,
        len: pick(u, &[payload as u32, payload as u32, 0], |u| u.arbitrary())?,
        type_: pick(u, &[1, 1, 1], |u| u.arbitrary())?,
        op: u.int_in_range(0u16..=8)?,
        flags: pick(u, &[0, 0, 1, 2, 3], |u| u.arbitrary())?,
        buf_alloc: pick(u, &[0, 4096, 65536, u32::MAX], |u| u.arbitrary())?,
        fwd_cnt: pick(u, &[0, 0, u32::MAX], |u| u.arbitrary())?,
    })
}

/// A transmit chain and the RW payload bytes it offers the host.
fn tx_chain(u: &mut Unstructured) -> AResult<(Vec<Desc>, u64)> {
    let n = u.int_in_range(0usize..=80)?.min(u.len());
    let payload = u.bytes(n)?.to_vec();
    let h = header(u, payload.len())?;
    let mut bytes = h.to_bytes().to_vec();
    let mut first = desc(u, false, None)?;
    let split = u.ratio(1u8, 8)?;
    let offered = if h.op == 5 { u64::from(h.len) } else { 0 };
    if split {
        // The header over two buffers.
        let cut = u.int_in_range(1usize..=HDR_LEN - 1)?;
        first.len = cut as u32;
        first.fill = bytes[..cut].to_vec();
        let mut second = desc(u, false, None)?;
        bytes.drain(..cut);
        bytes.extend_from_slice(&payload);
        second.len = bytes.len() as u32;
        second.fill = bytes;
        return Ok((vec![first, second], offered));
    }
    bytes.extend_from_slice(&payload);
    if !u.ratio(1u8, 8)? {
        first.len = bytes.len() as u32;
    }
    first.fill = bytes;
    let mut descs = vec![first];
    for _ in 0..u.int_in_range(0u8..=2)? {
        descs.push(desc(u, false, None)?);
    }
    Ok((descs, offered))
}

fn rx_chain(u: &mut Unstructured) -> AResult<Vec<Desc>> {
    let mut descs = Vec::new();
    for _ in 0..u.int_in_range(1u8..=2)? {
        let mut d = desc(u, true, None)?;
        if u.ratio(1u8, 2)? {
            d.len = (HDR_LEN + usize::from(u.int_in_range(0u8..=128)?)) as u32;
        }
        descs.push(d);
    }
    Ok(descs)
}

/// A fresh socket path per run.
fn socket_path() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "vmm-fuzz-vsock-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The last packet the device put in a receive buffer, when its first descriptor holds the
/// header: well formed, from the host to the guest. Later packets never overwrite the last one.
fn check_last_rx(mem: &devices::GuestMemoryMmap, q: &QueueLayout, used: u16) {
    if used == 0 {
        return;
    }
    let at = q.used + 4 + 8 * (u64::from(used - 1) % u64::from(q.size));
    let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
    let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
    if len == 0 {
        return;
    }
    assert!(
        len as usize >= HDR_LEN && len as usize <= HDR_LEN + MAX_PKT_LEN,
        "a receive chain used with {len} bytes"
    );
    let d = q.desc + 16 * u64::from(id);
    let addr: u64 = mem.read_obj(GuestAddress(d)).unwrap();
    let dlen: u32 = mem.read_obj(GuestAddress(d + 8)).unwrap();
    let flags: u16 = mem.read_obj(GuestAddress(d + 12)).unwrap();
    if flags & VIRTQ_DESC_F_INDIRECT != 0
        || flags & VIRTQ_DESC_F_WRITE == 0
        || (dlen as usize) < HDR_LEN
    {
        return;
    }
    let mut b = [0u8; HDR_LEN];
    if mem.read_slice(&mut b, GuestAddress(addr)).is_err() {
        return;
    }
    let h = Header::from_bytes(&b);
    assert_eq!((h.src_cid, h.dst_cid, h.type_), (2, CID, 1), "{h:?}");
    assert_eq!(h.len as usize + HDR_LEN, len as usize, "{h:?}");
    assert!((1..=7).contains(&h.op), "{h:?}");
}

fn run(data: &[u8]) -> AResult<()> {
    let mut u = Unstructured::new(data);
    let size = 1u16 << u.int_in_range(0u8..=5)?;
    let mut rx = Vec::new();
    for _ in 0..u.int_in_range(0u8..=8)? {
        rx.push(rx_chain(&mut u)?);
    }
    let mut tx = Vec::new();
    let mut offered = 0u64;
    for _ in 0..u.int_in_range(0u8..=8)? {
        let (chain, n) = tx_chain(&mut u)?;
        offered += n;
        tx.push(chain);
    }
    let mut callers = Vec::new();
    for _ in 0..u.int_in_range(0u8..=3)? {
        let mut b = match u.int_in_range(0u8..=3)? {
            0 => Vec::new(),
            1 => format!("CONNECT {}\n", u.int_in_range(0u32..=1100)?).into_bytes(),
            _ => b"CONNECT 1000\n".to_vec(),
        };
        let n = u.int_in_range(0usize..=40)?.min(u.len());
        b.extend_from_slice(u.bytes(n)?);
        callers.push(b);
    }

    let path = socket_path();
    let listened = PathBuf::from(format!("{}_{LISTENED}", path.display()));
    let Ok(host) = UnixListener::bind(&listened) else {
        panic!("cannot bind {}", listened.display());
    };
    host.set_nonblocking(true).unwrap();
    let Ok(vsock) = Vsock::new(CID, &path) else {
        panic!("cannot build the device");
    };
    let mut programs: Vec<UnixStream> = Vec::new();
    for b in &callers {
        let Ok(mut s) = UnixStream::connect(&path) else {
            panic!("cannot connect to the device's socket");
        };
        s.set_nonblocking(true).unwrap();
        let _ = s.write(b);
        programs.push(s);
    }
    let mem = memory(&[]);
    // The event queue stays unready: the device sends no events.
    let qs = [
        QueueLayout::standard(0, size),
        QueueLayout::standard(1, size),
    ];
    let posted_rx = post(&mem, &qs[0], &rx, 0);
    let posted_tx = post(&mem, &qs[1], &tx, 0);
    // An indirect descriptor's table comes from guest memory: the harness cannot know what it
    // offers.
    let indirect = tx.iter().flatten().any(|d| d.extra_flags != 0);
    let vsock = Arc::new(Mutex::new(vsock));
    let mut el = Loop::new(vsock.clone());
    let mut t = transport(&mem, &vsock);
    let mut received = 0u64;
    let mut accepted = Vec::new();
    if start(&mut t, 1 << 32, &qs) {
        wr(&mut t, reg::QUEUE_NOTIFY, 1);
        wr(&mut t, reg::QUEUE_NOTIFY, 0);
        for _ in 0..4 {
            el.run(8);
            while let Ok((s, _)) = host.accept() {
                s.set_nonblocking(true).unwrap();
                // The guest's connection gets a few bytes back.
                let _ = (&s).write(b"from the host");
                accepted.push(s);
            }
            for s in &accepted {
                let mut buf = [0u8; 4096];
                loop {
                    match (&*s).read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => received += n as u64,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    }
                }
            }
        }
    }
    let used_rx = check_used(&mem, &qs[0], &posted_rx);
    check_used(&mem, &qs[1], &posted_tx);
    check_last_rx(&mem, &qs[0], used_rx);
    assert!(
        indirect || received <= offered,
        "the host got {received} bytes, the guest's RW packets carried {offered}"
    );
    wr(&mut t, reg::STATUS, 0);
    el.run(2);
    drop(programs);
    drop(el);
    drop(t);
    drop(vsock);
    let _ = std::fs::remove_file(&listened);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});

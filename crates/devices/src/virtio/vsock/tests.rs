//! virtio-vsock against hand-built queues (no KVM) and real Unix sockets: packet checks, both
//! ways of connecting, credit, half-close, back-pressure, lying guests, bounds.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

use event_manager::EventSet;
use vm_memory::{Bytes, GuestAddress};

use super::muxer::CONTROL_MAX;
use super::packet::{check, Header, Invalid, HDR_LEN};
use super::*;
use crate::persist::{Persist, PersistError};
use crate::test_util::RingDriver;
use crate::virtio::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::GuestMemoryMmap;

const CID: u64 = 3;
const F_WRITE: u16 = 2;
const QSIZE: u16 = 16;
/// Per queue: descriptor table, avail ring, used ring.
const RINGS: [(u64, u64, u64); 3] = [
    (0x0, 0x1000, 0x2000),
    (0x4000, 0x5000, 0x6000),
    (0x8000, 0x9000, 0xa000),
];
/// Transmit packets (one slot per descriptor), then receive buffers.
const TX_AREA: u64 = 0x10_0000;
const TX_SLOT: u64 = 0x1_1000;
const RX_AREA: u64 = 0x40_0000;
const RX_SLOT: u64 = 0x1_1000;
const MEM_SIZE: u64 = 0x80_0000;

fn socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vmm-vsock-{name}-{}.sock", std::process::id()))
}

struct Harness {
    mem: GuestMemoryMmap,
    dev: Vsock,
    drivers: [RingDriver; 3],
    path: PathBuf,
    tx_next: u64,
    rx_next: u64,
    /// Used receive entries already looked at.
    rx_seen: u16,
    /// Receive buffers posted and not yet used.
    rx_posted: u16,
}

/// A packet from the guest (CID 3) to the host, with 64 KiB of receive buffer.
fn g(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: VSOCK_TYPE_STREAM,
        op,
        buf_alloc: 64 << 10,
        ..Header::default()
    }
}

impl Harness {
    fn new(name: &str) -> Harness {
        let path = socket_path(name);
        let _ = std::fs::remove_file(&path);
        let mut dev = Vsock::new(CID, &path).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        let interrupt = Arc::new(Interrupt::new().unwrap());
        let queues = RINGS
            .iter()
            .map(|&rings| crate::test_util::ready_queue(&mem, QSIZE, rings, false))
            .collect();
        dev.activate(mem.clone(), interrupt, queues, 1 << VIRTIO_F_VERSION_1)
            .unwrap();
        Harness {
            mem,
            dev,
            drivers: RINGS.map(|(d, a, u)| RingDriver::new(d, a, u, QSIZE)),
            path,
            tx_next: 0,
            rx_next: 0,
            rx_seen: 0,
            rx_posted: 0,
        }
    }

    /// Posts a transmit chain (header and payload in two buffers), without processing it.
    fn post_tx(&mut self, h: Header, data: &[u8]) {
        let at = TX_AREA + (self.tx_next % u64::from(QSIZE)) * TX_SLOT;
        self.tx_next += 1;
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(at))
            .unwrap();
        self.mem
            .write_slice(data, GuestAddress(at + 0x100))
            .unwrap();
        let descs = [(at, HDR_LEN as u32, 0), (at + 0x100, data.len() as u32, 0)];
        let n = if data.is_empty() { 1 } else { 2 };
        self.drivers[TX_QUEUE].add_chain(&self.mem, &descs[..n]);
    }

    /// Sends a packet and lets the device serve it.
    fn send(&mut self, h: Header, data: &[u8]) {
        self.post_tx(h, data);
        self.dev.process_tx();
        self.dev.run();
    }

    /// Posts receive buffers of `size` bytes until `n` are outstanding.
    fn post_rx(&mut self, n: u16, size: u32) {
        while self.rx_posted < n.min(QSIZE) {
            let at = RX_AREA + (self.rx_next % u64::from(QSIZE)) * RX_SLOT;
            self.rx_next += 1;
            self.drivers[RX_QUEUE].add_chain(&self.mem, &[(at, size, F_WRITE)]);
            self.rx_posted += 1;
        }
    }

    /// The packets the device put in receive buffers since the last call.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut v = Vec::new();
        let used = self.drivers[RX_QUEUE].used_idx(&self.mem);
        while self.rx_seen != used {
            let (head, len) = self.drivers[RX_QUEUE].used(&self.mem, self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            self.rx_posted -= 1;
            let (d, ..) = RINGS[RX_QUEUE];
            let addr: u64 = self
                .mem
                .read_obj(GuestAddress(d + 16 * u64::from(head)))
                .unwrap();
            assert!(len as usize >= HDR_LEN, "short packet of {len} bytes");
            let mut hb = [0u8; HDR_LEN];
            self.mem.read_slice(&mut hb, GuestAddress(addr)).unwrap();
            let h = Header::from_bytes(&hb);
            assert_eq!(h.len as usize, len as usize - HDR_LEN);
            let mut data = vec![0u8; h.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(addr + HDR_LEN as u64))
                .unwrap();
            v.push((h, data));
        }
        v
    }

    /// Posts buffers, serves every host socket as if epoll said it is ready, and collects.
    fn pump(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.post_rx(QSIZE, 4096 + HDR_LEN as u32);
        let mut all = Vec::new();
        for _ in 0..8 {
            for fd in self.dev.muxer.fds() {
                self.dev
                    .muxer
                    .on_host_event(fd, EventSet::IN | EventSet::OUT);
            }
            self.dev.process_tx();
            self.dev.run();
            all.extend(self.recv());
            self.post_rx(QSIZE, 4096 + HDR_LEN as u32);
        }
        all
    }

    /// A host program connected to the device's socket that asked for guest `port` and the
    /// REQUEST the guest got.
    fn host_connect(&mut self, port: u32) -> (UnixStream, Header) {
        let mut s = UnixStream::connect(&self.path).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        let got = self.pump();
        assert_eq!(got.len(), 1, "{got:?}");
        let req = got[0].0;
        assert_eq!(
            (req.op, req.src_cid, req.dst_cid, req.dst_port),
            (VSOCK_OP_REQUEST, HOST_CID, CID, port)
        );
        assert!(req.src_port >= FIRST_HOST_PORT);
        (s, req)
    }

    /// The guest accepts a host program's request: the program reads `OK <port>\n`.
    fn guest_accepts(&mut self, host: &mut UnixStream, req: &Header) {
        self.send(g(VSOCK_OP_RESPONSE, req.dst_port, req.src_port), &[]);
        let mut ok = vec![0u8; 32];
        let n = host.read(&mut ok).unwrap();
        assert_eq!(&ok[..n], format!("OK {}\n", req.src_port).as_bytes());
    }

    fn tx_used(&self) -> u16 {
        self.drivers[TX_QUEUE].used_idx(&self.mem)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(unix::port_path(&self.path, 52));
    }
}

fn payload(h: &[(Header, Vec<u8>)]) -> Vec<u8> {
    h.iter()
        .filter(|(h, _)| h.op == VSOCK_OP_RW)
        .flat_map(|(_, d)| d.clone())
        .collect()
}

#[test]
fn headers_round_trip_and_are_checked() {
    let h = Header {
        src_cid: 0x1122_3344_5566_7788,
        dst_cid: 2,
        src_port: 7,
        dst_port: 9,
        len: 10,
        type_: 1,
        op: 5,
        flags: 3,
        buf_alloc: 100,
        fwd_cnt: 50,
    };
    assert_eq!(Header::from_bytes(&h.to_bytes()), h);
    assert_eq!(h.to_bytes()[0], 0x88, "little endian");

    let ok = g(VSOCK_OP_RW, 1, 2);
    assert_eq!(check(&ok, CID, 0), Ok(()));
    let drop = |h: &Header, room| matches!(check(h, CID, room), Err(Invalid::Drop(_)));
    let reset = |h: &Header| matches!(check(h, CID, 100), Err(Invalid::Reset(_)));
    assert!(drop(&Header { src_cid: 4, ..ok }, 0), "another CID");
    assert!(drop(&Header { src_cid: 2, ..ok }, 0), "the host's CID");
    assert!(drop(&Header { len: 11, ..ok }, 10), "longer than the chain");
    let huge = MAX_PKT_LEN as u32 + 1;
    assert!(
        drop(&Header { len: huge, ..ok }, 1 << 20),
        "beyond the limit"
    );
    assert!(reset(&Header { dst_cid: 5, ..ok }));
    assert!(reset(&Header { type_: 2, ..ok }), "seqpacket");
    assert!(reset(&Header { op: 0, ..ok }));
    assert!(reset(&Header { op: 8, ..ok }));
    assert!(reset(&Header { op: 0xffff, ..ok }));
    let shut = g(VSOCK_OP_SHUTDOWN, 1, 2);
    assert_eq!(check(&Header { flags: 3, ..shut }, CID, 0), Ok(()));
    assert!(reset(&Header { flags: 4, ..shut }));
    assert!(reset(&Header {
        flags: 1,
        ..g(VSOCK_OP_REQUEST, 1, 2)
    }));
    // A reset is acted on whatever its type, never answered.
    assert_eq!(
        check(
            &Header {
                type_: 9,
                ..g(VSOCK_OP_RST, 1, 2)
            },
            CID,
            0
        ),
        Ok(())
    );
}

#[test]
fn the_cid_is_checked_and_in_the_config_space() {
    for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
        let path = socket_path(&format!("cid{cid}"));
        assert!(matches!(
            Vsock::new(cid, &path),
            Err(crate::Error::VsockCid { .. })
        ));
        let _ = std::fs::remove_file(&path);
    }
    let h = Harness::new("config");
    let mut b = [0u8; 8];
    h.dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), CID);
    assert_eq!(h.dev.device_type(), 19);
    assert_eq!(h.dev.queue_max_sizes().len(), 3);
}

#[test]
fn guest_connects_to_a_host_listener_at_path_port() {
    let mut h = Harness::new("g2h");
    let listener = UnixListener::bind(unix::port_path(&h.path, 52)).unwrap();
    h.post_rx(4, 4096);
    h.send(g(VSOCK_OP_REQUEST, 1000, 52), &[]);
    let got = h.recv();
    assert_eq!(got.len(), 1);
    let r = got[0].0;
    assert_eq!(
        (
            r.op,
            r.src_cid,
            r.dst_cid,
            r.src_port,
            r.dst_port,
            r.buf_alloc
        ),
        (VSOCK_OP_RESPONSE, HOST_CID, CID, 52, 1000, CONN_BUF)
    );
    let (mut host, _) = listener.accept().unwrap();
    h.send(g(VSOCK_OP_RW, 1000, 52), b"");
    let mut rw = g(VSOCK_OP_RW, 1000, 52);
    rw.len = 5;
    h.send(rw, b"hello");
    let mut buf = [0u8; 5];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    host.write_all(b"world").unwrap();
    let got = h.pump();
    assert_eq!(payload(&got), b"world");
    assert_eq!(got[0].0.fwd_cnt, 5, "the device counts what the host took");
    assert_eq!(h.dev.connections(), 1);
    // The guest resets: the host end sees the end.
    h.send(g(VSOCK_OP_RST, 1000, 52), &[]);
    assert_eq!(h.dev.connections(), 0);
    assert_eq!(host.read(&mut buf).unwrap(), 0);
    assert_eq!(h.dev.bad_packets(), 0);
}

#[test]
fn a_guest_request_without_a_listener_is_reset() {
    let mut h = Harness::new("norst");
    h.post_rx(4, 4096);
    h.send(g(VSOCK_OP_REQUEST, 1000, 52), &[]);
    let got = h.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].0.op, got[0].0.src_port, got[0].0.dst_port),
        (VSOCK_OP_RST, 52, 1000)
    );
    assert_eq!(h.dev.connections(), 0);
    // Data for a connection that does not exist is reset too; a reset is never answered.
    let mut rw = g(VSOCK_OP_RW, 1000, 52);
    rw.len = 2;
    h.send(rw, b"hi");
    h.send(g(VSOCK_OP_RST, 1000, 52), &[]);
    let got = h.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, VSOCK_OP_RST);
}

#[test]
fn a_host_program_connects_with_connect_and_reads_ok() {
    let mut h = Harness::new("h2g");
    let (mut host, req) = h.host_connect(80);
    h.guest_accepts(&mut host, &req);
    // Host to guest.
    host.write_all(b"ping").unwrap();
    let got = h.pump();
    assert_eq!(payload(&got), b"ping");
    assert_eq!(got[0].0.dst_port, 80);
    // Guest to host.
    let mut rw = g(VSOCK_OP_RW, 80, req.src_port);
    rw.len = 4;
    h.send(rw, b"pong");
    let mut buf = [0u8; 4];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    // A second program gets another host port.
    let (_host2, req2) = h.host_connect(80);
    assert_ne!(req2.src_port, req.src_port);
}

#[test]
fn a_guest_reset_closes_the_host_program() {
    let mut h = Harness::new("h2grst");
    let (mut host, req) = h.host_connect(81);
    h.send(g(VSOCK_OP_RST, 81, req.src_port), &[]);
    let mut buf = [0u8; 8];
    assert_eq!(host.read(&mut buf).unwrap(), 0);
    assert_eq!(h.dev.connections(), 0);
}

#[test]
fn garbage_instead_of_connect_closes_the_caller() {
    let mut h = Harness::new("garbage");
    for line in [&b"HELLO 1\n"[..], b"CONNECT x\n", &[b'C'; 40]] {
        let mut s = UnixStream::connect(&h.path).unwrap();
        s.write_all(line).unwrap();
        assert!(h.pump().is_empty());
        let mut buf = [0u8; 8];
        // Closed: the end, or a reset when the device left bytes unread.
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("{line:?}: {other:?}"),
        }
    }
    assert_eq!(h.dev.connections(), 0);
    // A caller that has said nothing yet waits.
    let _quiet = UnixStream::connect(&h.path).unwrap();
    h.pump();
    assert_eq!(h.dev.connections(), 1);
}

#[test]
fn half_close_both_ways() {
    let mut h = Harness::new("half");
    let (mut host, req) = h.host_connect(82);
    h.guest_accepts(&mut host, &req);
    let port = req.src_port;
    // The guest stops sending: the host reads the end and can still write.
    let mut shut = g(VSOCK_OP_SHUTDOWN, 82, port);
    shut.flags = VSOCK_FLAGS_SHUTDOWN_SEND;
    h.send(shut, &[]);
    let mut buf = [0u8; 8];
    assert_eq!(host.read(&mut buf).unwrap(), 0);
    host.write_all(b"late").unwrap();
    assert_eq!(payload(&h.pump()), b"late");
    // The host stops sending too: the guest hears SHUTDOWN(SEND), then the connection is over
    // and reset.
    host.shutdown(std::net::Shutdown::Write).unwrap();
    let got = h.pump();
    let ops: Vec<(u16, u32)> = got.iter().map(|(h, _)| (h.op, h.flags)).collect();
    assert_eq!(
        ops,
        [
            (VSOCK_OP_SHUTDOWN, VSOCK_FLAGS_SHUTDOWN_SEND),
            (VSOCK_OP_RST, 0)
        ]
    );
    assert_eq!(h.dev.connections(), 0);
}

#[test]
fn the_device_reads_the_host_only_within_the_guests_credit() {
    let mut h = Harness::new("credit");
    let (mut host, req) = h.host_connect(83);
    let port = req.src_port;
    let mut resp = g(VSOCK_OP_RESPONSE, 83, port);
    resp.buf_alloc = 1000;
    h.send(resp, &[]);
    let mut ok = [0u8; 32];
    let _ = host.read(&mut ok).unwrap();
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
    host.write_all(&data).unwrap();
    let mut got = payload(&h.pump());
    assert_eq!(got.len(), 1000, "exactly the credit");
    assert!(payload(&h.pump()).is_empty(), "nothing more without credit");
    // The guest consumes and says so, in steps.
    for fwd in [1000u32, 2000, 3000, 4000] {
        let mut up = g(VSOCK_OP_CREDIT_UPDATE, 83, port);
        up.buf_alloc = 1000;
        up.fwd_cnt = fwd;
        h.send(up, &[]);
        got.extend(payload(&h.pump()));
    }
    assert!(got == data, "every byte, in order");
    // The guest asks for the device's credit: it answers.
    h.send(g(VSOCK_OP_CREDIT_REQUEST, 83, port), &[]);
    let got = h.pump();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].0.op, got[0].0.buf_alloc),
        (VSOCK_OP_CREDIT_UPDATE, CONN_BUF)
    );
}

#[test]
fn a_lying_guest_gets_no_more_than_its_buffers_and_the_truth() {
    let mut h = Harness::new("liar");
    let (mut host, req) = h.host_connect(84);
    let port = req.src_port;
    // A huge buffer: reads are bounded by the receive buffers (4 KiB each).
    let mut resp = g(VSOCK_OP_RESPONSE, 84, port);
    resp.buf_alloc = u32::MAX;
    h.send(resp, &[]);
    let mut ok = [0u8; 32];
    let _ = host.read(&mut ok).unwrap();
    host.write_all(&[7u8; 10000]).unwrap();
    let got = h.pump();
    assert!(got.iter().all(|(h, _)| h.len <= 4096));
    assert_eq!(payload(&got).len(), 10000);
    // Claiming to have consumed more than it got: no credit at all.
    let mut up = g(VSOCK_OP_CREDIT_UPDATE, 84, port);
    up.buf_alloc = 100;
    up.fwd_cnt = 20000;
    h.send(up, &[]);
    host.write_all(b"x").unwrap();
    assert!(payload(&h.pump()).is_empty());
    // Oversized length, another source CID: dropped, counted, not answered.
    let mut big = g(VSOCK_OP_RW, 84, port);
    big.len = 100;
    h.send(big, b"short");
    let mut other = g(VSOCK_OP_RW, 84, port);
    other.src_cid = 9;
    h.send(other, &[]);
    assert!(h.pump().is_empty());
    assert_eq!(h.dev.bad_packets(), 2);
    // An unknown op: reset.
    let mut op = g(VSOCK_OP_RW, 84, port);
    op.op = 99;
    h.send(op, &[]);
    let got = h.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, VSOCK_OP_RST);
    // A device-writable buffer where the header should be, and a receive buffer too small
    // for a header: returned, counted, the device keeps running.
    let before = h.dev.bad_packets();
    h.drivers[TX_QUEUE].add_chain(&h.mem, &[(TX_AREA, HDR_LEN as u32, F_WRITE)]);
    h.dev.process_tx();
    assert!(h.dev.bad_packets() > before);
    assert!(h.dev.core.is_running());
}

#[test]
fn a_host_that_never_reads_stops_the_guest_and_loses_nothing() {
    let mut h = Harness::new("slow");
    let listener = UnixListener::bind(unix::port_path(&h.path, 52)).unwrap();
    h.post_rx(4, 4096);
    h.send(g(VSOCK_OP_REQUEST, 1000, 52), &[]);
    assert_eq!(h.recv()[0].0.op, VSOCK_OP_RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    // The device's end takes little at a time.
    let fd = h.dev.muxer.conn((52, 1000)).unwrap().stream.as_raw_fd();
    let small: libc::c_int = 4096;
    // SAFETY: setsockopt with a valid int on a socket the device owns (the test holds it).
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&small as *const libc::c_int).cast(),
            4,
        )
    };
    // The guest ignores its credit and sends 16 KiB packets, six at once (96 KiB).
    let chunk: Vec<u8> = (0..16384u32).map(|i| (i % 241) as u8).collect();
    let total = 16usize;
    let base = h.tx_used();
    let taken = |h: &Harness| usize::from(h.tx_used().wrapping_sub(base));
    let mut rw = g(VSOCK_OP_RW, 1000, 52);
    rw.len = chunk.len() as u32;
    for _ in 0..6 {
        h.post_tx(rw, &chunk);
    }
    let mut posted = 6;
    h.dev.process_tx();
    assert!(
        taken(&h) < 6,
        "the transmit queue stops while the connection is full"
    );
    assert!(h.dev.muxer.tx_stalled);
    let held = h.dev.muxer.conn((52, 1000)).unwrap().pending_len();
    assert!(held <= CONN_BUF as usize, "at most CONN_BUF held: {held}");
    // Nothing changes until the host reads.
    h.pump();
    assert!(taken(&h) < 6);
    // The host reads everything: the rest flows, nothing lost.
    host.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let want = chunk.len() * total;
    for _ in 0..10_000 {
        let mut buf = [0u8; 65536];
        match host.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        h.pump();
        while posted < total && posted - taken(&h) < 6 {
            h.post_tx(rw, &chunk);
            posted += 1;
        }
        if got.len() == want {
            break;
        }
    }
    assert_eq!(got.len(), want);
    assert!(got.chunks(chunk.len()).all(|c| c == &chunk[..]));
    assert_eq!(taken(&h), total);
    assert_eq!(h.dev.bad_packets(), 0);
}

#[test]
fn answers_owed_to_a_guest_without_receive_buffers_are_bounded() {
    let mut h = Harness::new("owed");
    // Requests to nowhere, each owing a reset, and never a receive buffer.
    let mut taken = 0;
    for round in 0..(CONTROL_MAX as u32 / u32::from(QSIZE) + 4) {
        for i in 0..u32::from(QSIZE) {
            h.post_tx(g(VSOCK_OP_REQUEST, round * 100 + i, 7), &[]);
        }
        h.dev.process_tx();
        let used = h.tx_used();
        taken = used;
        if h.dev.muxer.tx_stalled {
            break;
        }
    }
    assert!(h.dev.muxer.tx_stalled, "the transmit queue stops");
    assert!(usize::from(taken) <= CONTROL_MAX);
    // Receive buffers let it go on.
    h.pump();
    assert!(!h.dev.muxer.tx_stalled);
}

#[test]
fn callers_beyond_the_bound_are_refused() {
    let mut h = Harness::new("flood");
    let mut callers = Vec::new();
    for _ in 0..MAX_CONNS + 10 {
        callers.push(UnixStream::connect(&h.path).unwrap());
        if callers.len() % 64 == 0 {
            h.pump();
        }
    }
    for _ in 0..4 {
        h.pump();
    }
    assert_eq!(h.dev.connections(), MAX_CONNS);
    // The refused ones were closed.
    let closed = callers
        .iter_mut()
        .filter(|s| {
            let mut s: &UnixStream = s;
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            matches!(s.read(&mut b), Ok(0))
        })
        .count();
    assert_eq!(closed, 10);
}

#[test]
fn guest_requests_beyond_the_bound_are_reset() {
    let mut h = Harness::new("gflood");
    let _listener = UnixListener::bind(unix::port_path(&h.path, 52)).unwrap();
    let (mut ok, mut rst) = (0, 0);
    let mut port = 0u32;
    while port < (MAX_CONNS + 8) as u32 {
        h.post_rx(QSIZE, 4096);
        for _ in 0..8 {
            h.post_tx(g(VSOCK_OP_REQUEST, 10_000 + port, 52), &[]);
            port += 1;
        }
        h.dev.process_tx();
        h.dev.run();
        for (p, _) in h.recv() {
            match p.op {
                VSOCK_OP_RESPONSE => ok += 1,
                VSOCK_OP_RST => rst += 1,
                op => panic!("op {op}"),
            }
        }
    }
    assert_eq!((ok, rst), (MAX_CONNS, 8));
    assert_eq!(h.dev.connections(), MAX_CONNS);
}

#[test]
fn a_reset_device_closes_every_connection() {
    let mut h = Harness::new("reset");
    let (mut host, req) = h.host_connect(85);
    h.guest_accepts(&mut host, &req);
    let evt = &h.dev.core.queue_events()[EVENT_QUEUE];
    let _ = evt.read();
    h.dev.reset();
    assert_eq!(h.dev.connections(), 0);
    // The event loop is brought round to stop watching the closed sockets.
    assert_eq!(h.dev.core.queue_events()[EVENT_QUEUE].read().unwrap(), 1);
    let mut b = [0u8; 1];
    assert_eq!(host.read(&mut b).unwrap(), 0);
}

#[test]
fn state_round_trips_without_connections_and_checks_the_cid() {
    let mut h = Harness::new("persist");
    let (mut host, req) = h.host_connect(86);
    h.guest_accepts(&mut host, &req);
    let state = h.dev.save();
    assert_eq!(state.cid, CID);
    let json = serde_json::to_string(&state).unwrap();
    let back: VsockState = serde_json::from_str(&json).unwrap();
    h.dev.restore(back.clone()).unwrap();
    assert_eq!(h.dev.connections(), 0, "connections are not restored");
    assert!(h.recv().is_empty(), "restore sends no packet");
    // A transport reset is owed: the event loop is woken, and the event waits for a buffer.
    assert!(h.dev.core.queue_events()[EVENT_QUEUE].read().unwrap() >= 1);
    h.dev.process_events();
    assert_eq!(h.drivers[EVENT_QUEUE].used_idx(&h.mem), 0);
    let event_buf = 0x70_0000;
    h.mem
        .write_slice(&[0xff; 4], GuestAddress(event_buf))
        .unwrap();
    h.drivers[EVENT_QUEUE].add_chain(&h.mem, &[(event_buf, 4, F_WRITE)]);
    h.dev.process_events();
    assert_eq!(h.drivers[EVENT_QUEUE].used_idx(&h.mem), 1);
    assert_eq!(h.drivers[EVENT_QUEUE].used(&h.mem, 0).1, 4);
    let id: u32 = h.mem.read_obj(GuestAddress(event_buf)).unwrap();
    assert_eq!(id, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET);
    // Once.
    h.drivers[EVENT_QUEUE].add_chain(&h.mem, &[(event_buf, 4, F_WRITE)]);
    h.dev.process_events();
    assert_eq!(h.drivers[EVENT_QUEUE].used_idx(&h.mem), 1);
    // Saved with no connection: nothing to reset, no event (the buffer stays posted).
    let quiet = h.dev.save();
    assert_eq!(quiet.connections, 0);
    h.dev.restore(quiet).unwrap();
    h.dev.process_events();
    assert_eq!(h.drivers[EVENT_QUEUE].used_idx(&h.mem), 1);
    let other = VsockState { cid: 4, ..back };
    assert!(matches!(
        h.dev.restore(other),
        Err(PersistError::Mismatch { .. })
    ));
}

#[test]
fn the_socket_file_is_private_and_removed_at_the_end() {
    use std::os::unix::fs::PermissionsExt;
    let path = {
        let h = Harness::new("file");
        let mode = std::fs::metadata(&h.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A second device on the same path is refused.
        assert!(Vsock::new(CID, &h.path).is_err());
        h.path.clone()
    };
    assert!(!path.exists());
}

/// Whether `fd` becomes readable within `limit`.
fn readable_within(fd: std::os::fd::RawFd, limit: std::time::Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd that lives across the call.
    let n = unsafe { libc::poll(&mut p, 1, limit.as_millis() as libc::c_int) };
    n == 1 && p.revents & libc::POLLIN != 0
}

/// The device closed its end of `s`: the end of input, or a reset when it left bytes unread.
fn closed_by_device(s: &mut UnixStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 8];
    let r = s.read(&mut b);
    s.set_nonblocking(false).unwrap();
    match r {
        Ok(0) => true,
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

/// Fires the CONNECT timer as the event loop would once it is readable, until `want`
/// connections remain or `limit` passes.
fn expire_until(h: &mut Harness, want: usize, limit: std::time::Duration) {
    let start = std::time::Instant::now();
    while h.dev.connections() > want && start.elapsed() < limit {
        let fd = h.dev.muxer.timer_fd();
        assert!(
            readable_within(fd, limit),
            "the CONNECT timer never fired ({} connections)",
            h.dev.connections()
        );
        h.dev.muxer.on_host_event(fd, EventSet::IN);
    }
}

#[test]
fn a_caller_that_never_ends_its_connect_line_is_closed_in_time() {
    use std::time::Duration;
    let mut h = Harness::new("slowline");
    h.dev.muxer.connect_timeout = Duration::from_millis(300);
    let mut silent = UnixStream::connect(&h.path).unwrap();
    let mut partial = UnixStream::connect(&h.path).unwrap();
    partial.write_all(b"CONNECT 8").unwrap();
    assert!(h.pump().is_empty());
    assert_eq!(h.dev.connections(), 2);
    // A later caller has its own clock.
    std::thread::sleep(Duration::from_millis(150));
    let mut later = UnixStream::connect(&h.path).unwrap();
    h.pump();
    assert_eq!(h.dev.connections(), 3);
    // The timer says when (nothing polls): readable at the first deadline, not before.
    let fd = h.dev.muxer.timer_fd();
    assert!(!readable_within(fd, Duration::from_millis(50)));
    assert!(readable_within(fd, Duration::from_secs(5)));
    h.dev.muxer.on_host_event(fd, EventSet::IN);
    assert_eq!(h.dev.connections(), 1);
    assert!(closed_by_device(&mut silent));
    assert!(closed_by_device(&mut partial));
    // The later one still has time: its line goes through.
    later.write_all(b"CONNECT 9\n").unwrap();
    let got = h.pump();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].0.op, got[0].0.dst_port), (VSOCK_OP_REQUEST, 9));
    h.guest_accepts(&mut later, &got[0].0);
    // An accepted connection is no caller: the timer no longer concerns it.
    std::thread::sleep(Duration::from_millis(400));
    h.dev.muxer.on_host_event(fd, EventSet::IN);
    assert_eq!(h.dev.connections(), 1);
    assert!(!closed_by_device(&mut later));
}

#[test]
fn silent_callers_holding_every_slot_time_out_and_the_next_caller_gets_one() {
    use std::time::Duration;
    let mut h = Harness::new("slotheld");
    h.dev.muxer.connect_timeout = Duration::from_millis(300);
    let mut callers = Vec::new();
    for _ in 0..MAX_CONNS {
        callers.push(UnixStream::connect(&h.path).unwrap());
        if callers.len() % 64 == 0 {
            h.pump();
        }
    }
    h.pump();
    assert_eq!(h.dev.connections(), MAX_CONNS);
    // The 1025th is refused while they wait.
    let mut refused = UnixStream::connect(&h.path).unwrap();
    h.pump();
    assert!(closed_by_device(&mut refused));
    assert_eq!(h.dev.connections(), MAX_CONNS);
    // Their time runs out: every one is closed, and a caller that says where to gets through.
    expire_until(&mut h, 0, Duration::from_secs(10));
    assert_eq!(h.dev.connections(), 0);
    assert!(callers.iter_mut().all(closed_by_device));
    let (mut host, req) = h.host_connect(90);
    h.guest_accepts(&mut host, &req);
}

#[test]
fn bytes_after_the_connect_line_in_the_same_write_reach_the_guest() {
    let mut h = Harness::new("early");
    let mut host = UnixStream::connect(&h.path).unwrap();
    host.write_all(b"CONNECT 83\nearly bytes").unwrap();
    let got = h.pump();
    assert_eq!(got.len(), 1, "{got:?}");
    let req = got[0].0;
    assert_eq!((req.op, req.dst_port), (VSOCK_OP_REQUEST, 83));
    h.guest_accepts(&mut host, &req);
    assert_eq!(payload(&h.pump()), b"early bytes");
}

#[test]
fn a_request_the_guest_never_answers_is_closed_in_time() {
    use std::time::Duration;
    let mut h = Harness::new("noanswer");
    h.dev.muxer.connect_timeout = Duration::from_millis(300);
    let (mut host, req) = h.host_connect(84);
    // An answered one stays.
    let (mut answered, req2) = h.host_connect(84);
    h.guest_accepts(&mut answered, &req2);
    assert_eq!(h.dev.connections(), 2);
    expire_until(&mut h, 1, Duration::from_secs(10));
    assert_eq!(h.dev.connections(), 1);
    assert!(closed_by_device(&mut host));
    // The guest hears the request is over.
    let got = h.pump();
    assert!(
        got.iter()
            .any(|(p, _)| p.op == VSOCK_OP_RST && p.src_port == req.src_port && p.dst_port == 84),
        "{got:?}"
    );
    // The accepted connection outlives the limit.
    std::thread::sleep(Duration::from_millis(400));
    h.dev
        .muxer
        .on_host_event(h.dev.muxer.timer_fd(), EventSet::IN);
    answered.write_all(b"still here").unwrap();
    assert_eq!(payload(&h.pump()), b"still here");
}

#[test]
fn a_failing_accept_rests_the_listener_instead_of_spinning() {
    use std::time::Duration;
    let mut h = Harness::new("emfile");
    h.dev.muxer.fail_accepts = u32::MAX;
    let mut caller = UnixStream::connect(&h.path).unwrap();
    h.pump();
    // Out of descriptors: the listener leaves the event loop (it stays readable, and a loop that
    // kept it would spin), and the caller waits in the backlog.
    assert!(!h.dev.muxer.accepting());
    assert_eq!(h.dev.connections(), 0);
    // The timer brings it back after the pause; then the caller is served.
    h.dev.muxer.fail_accepts = 0;
    let fd = h.dev.muxer.timer_fd();
    assert!(readable_within(fd, Duration::from_secs(3)));
    h.dev.muxer.on_host_event(fd, EventSet::IN);
    assert!(h.dev.muxer.accepting());
    caller.write_all(b"CONNECT 7\n").unwrap();
    let got = h.pump();
    assert_eq!(h.dev.connections(), 1);
    assert_eq!((got[0].0.op, got[0].0.dst_port), (VSOCK_OP_REQUEST, 7));
}

//! virtio-net: TX chains (virtio_net_hdr_v1 and frame bytes from the input, buffers wrong now
//! and then) and RX frames arriving on the "tap" (a SOCK_SEQPACKET socket, what `Tap::from_fd`
//! is for), served by the real device through the real transport and event loop, with the
//! features the input picks. Checks: no panic; only posted chains come back and no RX chain is
//! claimed to hold more than its buffers; no frame leaves bigger than the device's maximum.
#![no_main]

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use devices::virtio::net::{Net, Tap, MAX_BUFFER_LEN, VNET_HDR_LEN};
use libfuzzer_sys::arbitrary::{Result as AResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use vmm_fuzz::*;

fn tx_chain(u: &mut Unstructured) -> AResult<Vec<Desc>> {
    let mut hdr = vec![0u8; VNET_HDR_LEN];
    u.fill_buffer(&mut hdr)?;
    let mut first = desc(u, false, None)?;
    let n = u.int_in_range(0usize..=80)?.min(u.len());
    hdr.extend_from_slice(u.bytes(n)?);
    if !u.ratio(1u8, 8)? {
        first.len = hdr.len() as u32;
    }
    first.fill = hdr;
    let mut descs = vec![first];
    for _ in 0..u.int_in_range(0u8..=3)? {
        descs.push(desc(u, false, None)?);
    }
    Ok(descs)
}

fn rx_chain(u: &mut Unstructured) -> AResult<Vec<Desc>> {
    let mut descs = Vec::new();
    for _ in 0..u.int_in_range(1u8..=3)? {
        descs.push(desc(u, true, None)?);
    }
    Ok(descs)
}

fn run(data: &[u8]) -> AResult<()> {
    let mut u = Unstructured::new(data);
    let features: u64 = (1 << 32) | u64::from(u.arbitrary::<u32>()?);
    let size = 1u16 << u.int_in_range(0u8..=5)?;
    let used_event: [u16; 2] = [u.int_in_range(0u16..=4)?, u.int_in_range(0u16..=4)?];
    let mut rx = Vec::new();
    for _ in 0..u.int_in_range(0u8..=8)? {
        rx.push(rx_chain(&mut u)?);
    }
    let mut tx = Vec::new();
    for _ in 0..u.int_in_range(0u8..=8)? {
        tx.push(tx_chain(&mut u)?);
    }
    let mut frames = Vec::new();
    for _ in 0..u.int_in_range(0u8..=4)? {
        let f = if u.ratio(1u8, 16)? {
            vec![0x5a; u.int_in_range(0usize..=MAX_BUFFER_LEN + 16)?]
        } else {
            let n = u.int_in_range(0usize..=200)?.min(u.len());
            u.bytes(n)?.to_vec()
        };
        frames.push(f);
    }

    let (a, peer) = seqpacket_pair();
    for f in &frames {
        // SAFETY: send of an initialised buffer on a valid socket.
        unsafe { libc::send(peer.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
    }
    let mem = memory(&[]);
    let qs = [
        QueueLayout::standard(0, size),
        QueueLayout::standard(1, size),
    ];
    let posted_rx = post(&mem, &qs[0], &rx, used_event[0]);
    let posted_tx = post(&mem, &qs[1], &tx, used_event[1]);
    let Ok(net) = Net::new(Tap::from_fd(a, "fuzz0"), [0x52, 0x54, 0, 0, 0, 1]) else {
        panic!("cannot build the device");
    };
    let net = Arc::new(Mutex::new(net));
    let mut el = Loop::new(net.clone());
    let mut t = transport(&mem, &net);
    if start(&mut t, features, &qs) {
        wr(&mut t, reg::QUEUE_NOTIFY, 1);
        wr(&mut t, reg::QUEUE_NOTIFY, 0);
        el.run(8);
    }
    check_used(&mem, &qs[0], &posted_rx);
    check_used(&mem, &qs[1], &posted_tx);
    let mut buf = vec![0u8; MAX_BUFFER_LEN + 64];
    loop {
        // SAFETY: recv into a buffer of `buf.len()` bytes on a valid socket.
        let n = unsafe {
            libc::recv(
                peer.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            break;
        }
        assert!(n as usize <= MAX_BUFFER_LEN, "sent a frame of {n} bytes");
    }
    wr(&mut t, reg::STATUS, 0);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});

//! virtio-console: receive buffers, transmit chains and host input bytes from the fuzzer,
//! served by the real device (on a writer backend with a pipe as input) through the real
//! transport and event loop. Checks: no panic; only posted chains come back, none claimed to
//! hold more than its buffers; the backend never gets more bytes than the guest offered.
#![no_main]

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use devices::chardev::Chardev;
use devices::virtio::console::Console;
use libfuzzer_sys::arbitrary::{Result as AResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use vmm_fuzz::*;

struct Counter(Arc<AtomicU64>);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn chain(u: &mut Unstructured, write: bool) -> AResult<Vec<Desc>> {
    let mut descs = Vec::new();
    for _ in 0..u.int_in_range(1u8..=3)? {
        descs.push(desc(u, write, None)?);
    }
    Ok(descs)
}

fn run(data: &[u8]) -> AResult<()> {
    let mut u = Unstructured::new(data);
    let size = 1u16 << u.int_in_range(0u8..=5)?;
    let term_size: Option<(u16, u16)> = u.arbitrary()?;
    let mut rx = Vec::new();
    for _ in 0..u.int_in_range(0u8..=8)? {
        rx.push(chain(&mut u, true)?);
    }
    let mut tx = Vec::new();
    for _ in 0..u.int_in_range(0u8..=8)? {
        tx.push(chain(&mut u, false)?);
    }
    let config_writes: Vec<(u8, u32)> = u.arbitrary()?;
    let input = u.take_rest();

    let out = Arc::new(AtomicU64::new(0));
    let Ok(chardev) = Chardev::writer("fuzz-console", Box::new(Counter(out.clone()))) else {
        panic!("cannot build the backend");
    };
    let chardev = chardev.with_input(input_pipe(input));
    let Ok(console) = Console::with_size(chardev, term_size) else {
        panic!("cannot build the device");
    };
    let mem = memory(&[]);
    let qs = [
        QueueLayout::standard(0, size),
        QueueLayout::standard(1, size),
    ];
    let posted_rx = post(&mem, &qs[0], &rx, 0);
    let posted_tx = post(&mem, &qs[1], &tx, 0);
    // An indirect descriptor's table comes from guest memory: the harness cannot know what it
    // offers.
    let indirect = tx.iter().flatten().any(|d| d.extra_flags != 0);
    let offered: u64 = tx
        .iter()
        .flatten()
        .filter(|d| !d.write)
        .map(|d| u64::from(d.len))
        .sum();
    let console = Arc::new(Mutex::new(console));
    let mut el = Loop::new(console.clone());
    let mut t = transport(&mem, &console);
    for (off, v) in config_writes.iter().take(8) {
        wr(&mut t, reg::CONFIG + u64::from(*off), *v);
        rd(&mut t, reg::CONFIG + u64::from(*off));
    }
    if start(&mut t, 1 << 32 | 1, &qs) {
        wr(&mut t, reg::QUEUE_NOTIFY, 1);
        wr(&mut t, reg::QUEUE_NOTIFY, 0);
        el.run(8);
    }
    check_used(&mem, &qs[0], &posted_rx);
    check_used(&mem, &qs[1], &posted_tx);
    let sent = out.load(Ordering::Relaxed);
    assert!(
        indirect || sent <= offered,
        "backend got {sent} bytes, the guest offered {offered}"
    );
    wr(&mut t, reg::STATUS, 0);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});

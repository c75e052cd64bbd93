//! virtio-mmio register accesses: any sequence of reads and writes (any offset, any width,
//! any value) on the real transport with a real device behind it (virtio-blk, -net or
//! -console, picked by the input), over a guest memory image from the input, with the event
//! loop run in between. Checks: no panic; the identity registers never change; the device is
//! active only while the status says DRIVER_OK.
#![no_main]

use std::sync::{Arc, Mutex};

use devices::bus::BusDevice;
use devices::chardev::Chardev;
use devices::virtio::block::{Aio, Block, BlockConfig};
use devices::virtio::console::Console;
use devices::virtio::net::{Net, Tap};
use devices::virtio::MmioTransport;
use event_manager::MutEventSubscriber;
use libfuzzer_sys::arbitrary::{Result as AResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use vmm_fuzz::*;

const REGS: [u64; 24] = [
    0x00, 0x04, 0x08, 0x0c, 0x10, 0x14, 0x20, 0x24, 0x30, 0x34, 0x38, 0x44, 0x50, 0x60, 0x64, 0x70,
    0x80, 0x84, 0x90, 0x94, 0xa0, 0xa4, 0xac, 0xfc,
];

fn run(data: &[u8]) -> AResult<()> {
    let mut u = Unstructured::new(data);
    let kind = u.int_in_range(0u8..=2)?;
    let mut ops = Vec::new();
    for _ in 0..u.int_in_range(0u8..=64)? {
        let offset = match u.int_in_range(0u8..=7)? {
            0 => u64::from(u.arbitrary::<u16>()?),
            1 => 0x100 + u64::from(u.int_in_range(0u8..=32)?),
            _ => *u.choose(&REGS)?,
        };
        let width = *u.choose(&[4usize, 4, 4, 4, 1, 2, 8, 0, 3])?;
        let value: u64 = match u.int_in_range(0u8..=3)? {
            0 => u.arbitrary()?,
            _ => u64::from(u.int_in_range(0u16..=0x100)?),
        };
        // 0: read, 1: write, 2: write then run the event loop.
        ops.push((u.int_in_range(0u8..=2)?, offset, width, value));
    }
    let mem = memory(u.take_rest());

    let _disk;
    let (device, mut t): (Arc<Mutex<dyn MutEventSubscriber + Send>>, MmioTransport) = match kind {
        0 => {
            let (f, path) = memfd(8 * 512);
            _disk = Some(f);
            let Ok(b) = Block::new(BlockConfig {
                format: None,
                path,
                read_only: false,
                id: None,
                snapshot: false,
                aio: Aio::Sync,
            }) else {
                panic!("cannot open the memfd disk");
            };
            let b = Arc::new(Mutex::new(b));
            let t = transport(&mem, &b);
            (b, t)
        }
        1 => {
            _disk = None;
            let (a, _peer) = seqpacket_pair();
            let Ok(n) = Net::new(Tap::from_fd(a, "fuzz0"), [0x52, 0x54, 0, 0, 0, 1]) else {
                panic!("cannot build the device");
            };
            let n = Arc::new(Mutex::new(n));
            let t = transport(&mem, &n);
            (n, t)
        }
        _ => {
            _disk = None;
            let Ok(c) = Chardev::null("fuzz").and_then(|c| Console::with_size(c, Some((80, 25))))
            else {
                panic!("cannot build the device");
            };
            let c = Arc::new(Mutex::new(c));
            let t = transport(&mem, &c);
            (c, t)
        }
    };
    let device_id = rd(&mut t, 0x08);
    let mut el = Loop::new(device);
    for (op, offset, width, value) in ops {
        match op {
            0 => {
                let mut buf = vec![0u8; width];
                t.read(offset, &mut buf);
            }
            _ => {
                let bytes = value.to_le_bytes();
                t.write(offset, &bytes[..width]);
                if op == 2 {
                    el.run(4);
                }
            }
        }
        assert_eq!(rd(&mut t, reg::MAGIC), 0x7472_6976);
        assert_eq!(rd(&mut t, 0x04), 2);
        assert_eq!(rd(&mut t, 0x08), device_id);
        let status = rd(&mut t, reg::STATUS);
        assert_eq!(
            t.is_activated(),
            status & STATUS_DRIVER_OK != 0,
            "activated but status {status:#x}"
        );
    }
    el.run(4);
    wr(&mut t, reg::STATUS, 0);
    assert_eq!(rd(&mut t, reg::STATUS), 0);
    assert!(!t.is_activated());
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});

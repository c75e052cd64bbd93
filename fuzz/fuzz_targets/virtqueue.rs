//! Virtqueue descriptor chains as the guest lays them out: the input is the guest memory image
//! (rings, descriptors and buffers as raw bytes) plus the queue addresses and size the driver
//! programs; the real virtio-blk device serves the queue through the real transport and event
//! loop. Nothing may panic, and the disk image may neither grow nor change when read-only.
#![no_main]

use libfuzzer_sys::arbitrary::{Result as AResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};
use vmm_fuzz::*;

const DISK_LEN: usize = 16 * 512;

/// A ring address: mostly small (inside the image), sometimes anything.
fn ring_addr(u: &mut Unstructured) -> AResult<u64> {
    Ok(match u.int_in_range(0u8..=7)? {
        0 => u.arbitrary()?,
        1 => MEM_SIZE - u64::from(u.int_in_range(0u16..=512)?),
        _ => u64::from(u.int_in_range(0u16..=0x1000)?),
    })
}

fn run(data: &[u8]) -> AResult<()> {
    let mut u = Unstructured::new(data);
    let read_only: bool = u.arbitrary()?;
    let event_idx: bool = u.arbitrary()?;
    let size = match u.int_in_range(0u8..=3)? {
        0 => u.arbitrary()?,
        _ => 1u16 << u.int_in_range(0u8..=8)?,
    };
    let q = QueueLayout {
        size,
        desc: ring_addr(&mut u)?,
        avail: ring_addr(&mut u)?,
        used: ring_addr(&mut u)?,
    };
    // Up to three kicks, each optionally after moving avail.idx.
    let mut kicks = Vec::new();
    for _ in 0..u.int_in_range(1u8..=3)? {
        kicks.push(if u.arbitrary()? {
            Some(u.arbitrary::<u16>()?)
        } else {
            None
        });
    }
    let image = u.take_rest();

    let (disk, path) = memfd(DISK_LEN);
    let mem = memory(image);
    let block = block_device(path, read_only, None);
    let mut el = Loop::new(block.clone());
    let mut t = transport(&mem, &block);
    let features = (1u64 << 32) | if event_idx { 1 << 29 } else { 0 };
    if start(&mut t, features, &[q]) {
        for k in kicks {
            if let Some(idx) = k {
                let _ = mem.write_obj(idx, GuestAddress(q.avail.wrapping_add(2)));
            }
            wr(&mut t, reg::QUEUE_NOTIFY, 0);
            el.run(4);
        }
    }
    // The guest resets the device: the transport and the device go back to their start.
    wr(&mut t, reg::STATUS, 0);
    assert_eq!(rd(&mut t, reg::STATUS), 0);

    check_disk(&disk, DISK_LEN, read_only);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});

//! virtio-blk requests: well-formed rings holding request chains the fuzzer describes (header
//! type and sector, data buffers, status byte; directions flipped, lengths and addresses
//! wrong now and then; DISCARD and WRITE_ZEROES segment tables near the disk's end, with the
//! features negotiated or not), served by the real device through the real transport and event
//! loop.
//! Checks: no panic; the device returns only chains that were posted and never claims more
//! bytes written than a chain can hold; it answers every chain unless one names an indirect
//! table (never negotiated: the device fails); a second kick with nothing new returns nothing;
//! the image never grows and a read-only one never changes.
#![no_main]

use libfuzzer_sys::arbitrary::{Result as AResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};
use vmm_fuzz::*;

const DISK_LEN: usize = 16 * 512;

fn chain(u: &mut Unstructured) -> AResult<Vec<Desc>> {
    let req_type: u32 = match u.int_in_range(0u8..=11)? {
        0..=2 => 0, // IN
        3..=5 => 1, // OUT
        6 => 4,     // FLUSH
        7 => 8,     // GET_ID
        8 => 11,    // DISCARD
        9 => 13,    // WRITE_ZEROES
        _ => u.arbitrary()?,
    };
    let sector: u64 = if u.ratio(1u8, 8)? {
        u.arbitrary()?
    } else {
        u64::from(u.int_in_range(0u8..=20)?)
    };
    let mut header = Vec::with_capacity(16);
    header.extend_from_slice(&req_type.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&sector.to_le_bytes());
    let mut descs = vec![desc(u, false, Some(header))?];
    if !u.ratio(1u8, 8)? {
        descs[0].len = 16;
    }
    let device_writes = req_type == 0 || req_type == 8;
    if (req_type == 11 || req_type == 13) && !u.ratio(1u8, 8)? {
        // A segment table: sectors and counts around the disk's 16 sectors, flags mostly valid.
        let mut table = Vec::new();
        for _ in 0..u.int_in_range(1u8..=3)? {
            let sector = if u.ratio(1u8, 8)? {
                u.arbitrary()?
            } else {
                u64::from(u.int_in_range(0u8..=20)?)
            };
            let num: u32 = if u.ratio(1u8, 8)? {
                u.arbitrary()?
            } else {
                u32::from(u.int_in_range(0u8..=20)?)
            };
            let flags: u32 = if u.ratio(1u8, 8)? {
                u.arbitrary()?
            } else {
                u32::from(u.int_in_range(0u8..=1)?)
            };
            table.extend_from_slice(&sector.to_le_bytes());
            table.extend_from_slice(&num.to_le_bytes());
            table.extend_from_slice(&flags.to_le_bytes());
        }
        let len = table.len() as u32;
        let mut d = desc(u, false, Some(table))?;
        if !u.ratio(1u8, 8)? {
            d.len = len;
        }
        descs.push(d);
    }
    for _ in 0..u.int_in_range(0u8..=4)? {
        descs.push(desc(u, device_writes, None)?);
    }
    let mut status = desc(u, true, Some(Vec::new()))?;
    if !u.ratio(1u8, 8)? {
        status.len = 1;
    }
    descs.push(status);
    Ok(descs)
}

fn run(data: &[u8]) -> AResult<()> {
    let mut u = Unstructured::new(data);
    let read_only: bool = u.arbitrary()?;
    let event_idx: bool = u.arbitrary()?;
    let discard: bool = u.arbitrary()?;
    let size = 1u16 << u.int_in_range(0u8..=6)?;
    let used_event: u16 = u.int_in_range(0u16..=4)?;
    let mut chains = Vec::new();
    for _ in 0..u.int_in_range(0u8..=12)? {
        chains.push(chain(&mut u)?);
    }

    let (disk, path) = memfd(DISK_LEN);
    let mem = memory(&[]);
    let q = QueueLayout::standard(0, size);
    let posted = post(&mem, &q, &chains, used_event);
    let block = block_device(path, read_only, Some("fuzz".into()));
    let mut el = Loop::new(block.clone());
    let mut t = transport(&mem, &block);
    let mut features = (1u64 << 32) | (1 << 9) | if event_idx { 1 << 29 } else { 0 };
    if discard && !read_only {
        // DISCARD and WRITE_ZEROES (offered on writable disks only).
        features |= (1 << 13) | (1 << 14);
    }
    assert!(start(&mut t, features, &[q]), "a valid queue was refused");
    el.run(4);
    let used = check_used(&mem, &q, &posted);
    // An indirect descriptor was never negotiated: the device fails on the first chain that has
    // one (and answers no more); every other ring must be served whole.
    let indirect = chains.iter().flatten().any(|d| d.extra_flags != 0);
    if !indirect {
        assert_eq!(
            rd(&mut t, reg::STATUS) & STATUS_NEEDS_RESET,
            0,
            "well-formed rings made the device fail"
        );
        assert_eq!(
            usize::from(used),
            posted.writable.len(),
            "the device left chains unanswered"
        );
    }
    // Nothing new: a kick returns nothing more.
    wr(&mut t, reg::QUEUE_NOTIFY, 0);
    el.run(4);
    let again: u16 = mem.read_obj(GuestAddress(q.used + 2)).unwrap();
    assert_eq!(again, used, "a kick with no new chains returned some");
    wr(&mut t, reg::STATUS, 0);

    check_disk(&disk, DISK_LEN, read_only);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});

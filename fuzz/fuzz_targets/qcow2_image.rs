//! qcow2 images: a small valid image (512-byte clusters, 64 KiB virtual disk) with the fuzzer's
//! bytes patched over it and appended to it, opened as the device opens it (header checks,
//! backing chain through the gate, imago), then reads, writes, discards, zeroes and flushes at
//! the fuzzer's offsets.
//! Checks: no panic; a read-only image is never written; the file never grows by more than the
//! writes could need plus the qcow2 layer's slack.
#![no_main]

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use devices::fuzzing::{qcow2_ops, Qcow2Op, BUFFER};
use libfuzzer_sys::arbitrary::{Result as AResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestAddress;

const CLUSTER: usize = 512;
const VIRTUAL: u64 = 64 * 1024;

/// A valid qcow2 v3 image: header, refcount table, one refcount block, the L1 table.
fn template() -> Vec<u8> {
    let mut img = vec![0u8; 4 * CLUSTER];
    let mut put = |at: usize, b: &[u8]| img[at..at + b.len()].copy_from_slice(b);
    put(0, b"QFI\xfb");
    put(4, &3u32.to_be_bytes());
    put(20, &9u32.to_be_bytes()); // cluster_bits
    put(24, &VIRTUAL.to_be_bytes());
    put(36, &2u32.to_be_bytes()); // l1_size
    put(40, &(3 * CLUSTER as u64).to_be_bytes()); // l1_table_offset
    put(48, &(CLUSTER as u64).to_be_bytes()); // refcount_table_offset
    put(56, &1u32.to_be_bytes()); // refcount_table_clusters
    put(96, &4u32.to_be_bytes()); // refcount_order: 16-bit refcounts
    put(100, &104u32.to_be_bytes()); // header_length
    put(CLUSTER, &(2 * CLUSTER as u64).to_be_bytes()); // refcount block
    for c in 0..4 {
        put(2 * CLUSTER + 2 * c, &1u16.to_be_bytes());
    }
    img
}

fn op(u: &mut Unstructured) -> AResult<Qcow2Op> {
    let offset = |u: &mut Unstructured| -> AResult<u64> {
        Ok(if u.ratio(1u8, 16)? {
            u.arbitrary()?
        } else {
            u64::from(u.int_in_range(0u32..=(VIRTUAL as u32 / 512))?) * 512
        })
    };
    Ok(match u.int_in_range(0u8..=4)? {
        0 => Qcow2Op::Read {
            offset: offset(u)?,
            len: u32::from(u.int_in_range(1u8..=128)?) * 512,
        },
        1 => Qcow2Op::Write {
            offset: offset(u)?,
            len: u32::from(u.int_in_range(1u8..=128)?) * 512,
        },
        2 => Qcow2Op::Discard {
            offset: offset(u)?,
            len: u64::from(u.int_in_range(1u8..=128)?) * 512,
        },
        3 => Qcow2Op::WriteZeroes {
            offset: offset(u)?,
            len: u64::from(u.int_in_range(1u8..=128)?) * 512,
            unmap: u.arbitrary()?,
        },
        _ => Qcow2Op::Flush,
    })
}

thread_local! {
    static MEM: devices::GuestMemoryMmap =
        devices::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), BUFFER)]).unwrap();
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(writable) = u.arbitrary::<bool>() else {
        return;
    };
    let mut img = template();
    // Patches: (offset, byte) pairs over the image, growing it as they reach past its end.
    let patches = u.int_in_range(0u8..=64).unwrap_or(0);
    for _ in 0..patches {
        let (Ok(at), Ok(b)) = (u.int_in_range(0u16..=8191), u.arbitrary::<u8>()) else {
            break;
        };
        let at = usize::from(at);
        if at >= img.len() {
            img.resize(at + 1, 0);
        }
        img[at] = b;
    }
    let mut ops = Vec::new();
    while ops.len() < 32 {
        match op(&mut u) {
            Ok(o) => ops.push(o),
            Err(_) => break,
        }
    }
    let name = std::ffi::CString::new("fuzz-qcow2").unwrap();
    // SAFETY: memfd_create takes a NUL-terminated name and flags; returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` is new and owned by nobody else.
    let file: std::fs::File = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    (&file).write_all(&img).unwrap();
    let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let written: u64 = ops
        .iter()
        .map(|o| match *o {
            Qcow2Op::Write { len, .. } => u64::from(len),
            Qcow2Op::WriteZeroes { len, .. } => len,
            _ => 0,
        })
        .sum();
    MEM.with(|mem| {
        qcow2_ops(&file, &path, writable, mem, &ops);
    });
    let len = file.metadata().unwrap().len();
    if writable {
        // Data and metadata for every byte written, plus the slack a write may start past
        // the end (64 MiB), plus a cluster each.
        let bound = img.len() as u64 + 4 * written + (64 << 20) + 2 * CLUSTER as u64 * 64;
        assert!(len <= bound, "image grew from {} to {len} bytes", img.len());
    } else {
        let mut now = vec![0u8; img.len()];
        file.read_exact_at(&mut now, 0).unwrap();
        assert!(len == img.len() as u64 && now == img, "a read-only image was written");
    }
});

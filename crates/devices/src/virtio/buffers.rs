//! A chain's buffers as (guest address, length) lists, and copies between them and host bytes:
//! for the devices that move whole messages (virtio-vsock, virtio-fs) rather than stream
//! straight between guest memory and a file.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress};

use super::Chain;
use crate::GuestMemoryMmap;

/// Buffers as (guest address, length), in chain order.
pub(crate) type Buffers = Vec<(GuestAddress, u32)>;

/// A chain's buffers: the device-readable ones (a transmit chain's) or the device-writable ones
/// (a receive chain's), and whether it had buffers of the other kind.
pub(crate) fn buffers(chain: Chain<'_>, writable: bool) -> (Vec<(GuestAddress, u32)>, bool) {
    let mut v = Vec::new();
    let mut other = false;
    for d in chain {
        let d: Descriptor = d;
        if d.is_write_only() == writable {
            v.push((d.addr(), d.len()));
        } else {
            other = true;
        }
    }
    (v, other)
}

/// Copies `out.len()` bytes from `bufs` starting `skip` bytes in; false if guest memory refuses.
pub(crate) fn gather(
    mem: &GuestMemoryMmap,
    bufs: &[(GuestAddress, u32)],
    skip: usize,
    out: &mut [u8],
) -> bool {
    let (mut skip, mut done) = (skip, 0);
    for &(addr, len) in bufs {
        let len = len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(out.len() - done);
        let Some(at) = addr.checked_add(skip as u64) else {
            return false;
        };
        if mem.read_slice(&mut out[done..done + n], at).is_err() {
            return false;
        }
        skip = 0;
        done += n;
        if done == out.len() {
            return true;
        }
    }
    done == out.len()
}

/// Copies `data` into `bufs`; false if guest memory refuses or they are too short.
pub(crate) fn scatter(mem: &GuestMemoryMmap, bufs: &[(GuestAddress, u32)], data: &[u8]) -> bool {
    let mut done = 0;
    for &(addr, len) in bufs {
        if done == data.len() {
            break;
        }
        let n = (len as usize).min(data.len() - done);
        if mem.write_slice(&data[done..done + n], addr).is_err() {
            return false;
        }
        done += n;
    }
    done == data.len()
}

pub(crate) fn total(bufs: &[(GuestAddress, u32)]) -> usize {
    bufs.iter().map(|&(_, l)| l as usize).sum()
}

/// A request-and-reply chain's buffers: the device-readable ones, then the device-writable ones.
/// `None` if a readable buffer follows a writable one (virtio 1.2, 2.7.4.2: the driver places
/// device-writable descriptors after device-readable ones).
pub(crate) fn split(chain: Chain<'_>) -> Option<(Buffers, Buffers)> {
    let (mut readable, mut writable) = (Vec::new(), Vec::new());
    for d in chain {
        let d: Descriptor = d;
        if d.is_write_only() {
            writable.push((d.addr(), d.len()));
        } else if writable.is_empty() {
            readable.push((d.addr(), d.len()));
        } else {
            return None;
        }
    }
    Some((readable, writable))
}

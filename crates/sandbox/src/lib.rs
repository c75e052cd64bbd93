//! The host side of vmm's guest agent.
//!
//! * [`vsock`]: connecting to a guest port through vmm's vsock socket (`CONNECT <port>`);
//! * [`Agent`]: the agent client (run a command, write or read a file, shut the guest down);
//! * [`initramfs`]: the initramfs that carries the agent into a guest, built in memory;
//! * [`Sandbox`]: a VM booted with that initramfs, its agent ready (what `vmm run` and
//!   `examples/sandbox.rs` use).
//!
//! [`AGENT_BINARY`] is the agent itself, built static by this crate's build script.

mod client;
pub mod initramfs;
mod sandbox;
mod text;
pub mod vsock;

pub use agent::{Exec, Hello};
pub use client::{Agent, ClientError, CommandStatus, ExecIo, Output};
pub use sandbox::{describe, port_path, private_dir, share_cmdline, Sandbox, SandboxError};
pub use text::{printable, MAX_GUEST_TEXT};

/// The guest agent (`vmm-agent`), a static x86_64 Linux executable. A `static`, not a `const`:
/// one copy in the executable, whose pages [`agent_initramfs`] releases.
pub static AGENT_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vmm-agent"));

/// The agent's initramfs ([`initramfs::build`] of [`AGENT_BINARY`]), as the VM's initrd takes it.
///
/// Building it reads every page of `AGENT_BINARY`, which lives in the executable's read-only
/// data: those file pages (~1.4 MB) would stay in the process's resident set for the VM's whole
/// life, though nothing reads them again. They are dropped from it here (the archive holds its
/// own copy); a later read faults them back from the file.
pub fn agent_initramfs() -> std::sync::Arc<[u8]> {
    let archive = initramfs::build(AGENT_BINARY).into();
    release_pages(AGENT_BINARY);
    archive
}

/// Drops the whole pages of `data`, read-only data of the executable, from this process's page
/// tables (MADV_DONTNEED); the partial pages at its ends stay.
fn release_pages(data: &'static [u8]) {
    // SAFETY: sysconf has no memory effects.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => return,
    };
    let start = (data.as_ptr() as usize).next_multiple_of(page);
    let end = (data.as_ptr() as usize + data.len()) / page * page;
    if end <= start {
        return;
    }
    // SAFETY: [start, end) is whole pages inside `data`, a `&'static [u8]` from include_bytes:
    // read-only data of the executable (no relocations in a byte array), mapped privately from
    // its file and never written, so no page of it is anonymous. MADV_DONTNEED only removes those
    // pages from this process's page tables; the next read of any of them faults the same bytes
    // back in from the file, so every reference into `data` keeps seeing the same contents. No
    // other memory is touched (the range is rounded inwards).
    let r = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    if r != 0 {
        log::debug!(
            "madvise(MADV_DONTNEED) on the agent's pages: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom};

    /// How many of the whole pages of `data` this process has mapped (/proc/self/pagemap bit 63).
    fn present_pages(data: &[u8]) -> (usize, usize) {
        let page = 4096;
        let first = (data.as_ptr() as usize).div_ceil(page);
        let last = (data.as_ptr() as usize + data.len()) / page;
        let mut map = std::fs::File::open("/proc/self/pagemap").unwrap();
        map.seek(SeekFrom::Start(first as u64 * 8)).unwrap();
        let mut entries = vec![0u8; (last - first) * 8];
        map.read_exact(&mut entries).unwrap();
        let present = entries
            .chunks(8)
            .filter(|e| {
                let mut b = [0u8; 8];
                b.copy_from_slice(e);
                u64::from_le_bytes(b) >> 63 == 1
            })
            .count();
        (present, last - first)
    }

    #[test]
    fn the_agent_pages_leave_the_resident_set_once_the_initramfs_is_built() {
        let sum: u64 = AGENT_BINARY.iter().map(|b| u64::from(*b)).sum();
        let (present, pages) = present_pages(AGENT_BINARY);
        assert!(pages > 100, "the agent spans {pages} whole pages");
        assert_eq!(present, pages, "every page was just read");

        let archive = agent_initramfs();
        let (present, _) = present_pages(AGENT_BINARY);
        assert_eq!(
            present, 0,
            "{present} of {pages} agent pages still resident"
        );

        // The bytes are intact: they come back from the file, and the archive holds them.
        assert_eq!(AGENT_BINARY.iter().map(|b| u64::from(*b)).sum::<u64>(), sum);
        assert!(archive
            .windows(AGENT_BINARY.len())
            .step_by(4)
            .any(|w| w == AGENT_BINARY));
    }
}

//! Kernel images and initrds: the input is the file (ELF vmlinux, bzImage or anything), loaded
//! by the vm crate's real loaders into a 4 MiB guest. Checks: no panic; an accepted initrd
//! lies page aligned in low RAM above the kernel and 1 MiB; a cmdline capacity is non-zero.
#![no_main]

use std::io::Write;
use std::os::fd::AsRawFd;

use libfuzzer_sys::fuzz_target;
use vm_memory::GuestAddress;

const RAM: u64 = 4 << 20;

thread_local! {
    static MEM: devices::GuestMemoryMmap =
        devices::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    static FILE: std::fs::File = {
        let name = std::ffi::CString::new("fuzz-kernel").unwrap();
        // SAFETY: memfd_create takes a NUL-terminated name and flags; returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: `fd` is new and owned by nobody else.
        unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
    };
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, image)) = data.split_first() else {
        return;
    };
    FILE.with(|file| {
        file.set_len(0).unwrap();
        let mut f = file;
        // The memfd's offset is shared with every reopen; pwrite-like: rewind first.
        std::io::Seek::rewind(&mut f).unwrap();
        f.write_all(image).unwrap();
        let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        MEM.with(|mem| {
            if mode & 1 == 0 {
                if let Ok(k) = vm::fuzzing::load_kernel(mem, &path) {
                    assert!(k.cmdline_capacity > 0);
                }
            } else {
                let kernel_end = u64::from(mode >> 1) << 16;
                if let Ok((addr, size)) = vm::fuzzing::load_initrd(mem, &path, kernel_end) {
                    assert_eq!(size, image.len() as u64);
                    assert_eq!(addr % 4096, 0);
                    assert!(
                        addr >= kernel_end.max(1 << 20),
                        "initrd at {addr:#x} below the kernel end {kernel_end:#x}"
                    );
                    assert!(addr + size <= RAM, "initrd {addr:#x}+{size:#x} beyond RAM");
                }
            }
        });
    });
});

//! The host side of a NIC: a tap device opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, so every
//! frame read from or written to it starts with the 12-byte `virtio_net_hdr_v1` the guest uses too.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::VNET_HDR_LEN;
use crate::Error;

/// `TUN_F_*` offload flags for TUNSETOFFLOAD (linux/if_tun.h).
pub const TUN_F_CSUM: u32 = 0x01;
/// The tap may hand over TCPv4 segments larger than the MTU.
pub const TUN_F_TSO4: u32 = 0x02;
/// The tap may hand over TCPv6 segments larger than the MTU.
pub const TUN_F_TSO6: u32 = 0x04;

/// Longest interface name, without the NUL (IFNAMSIZ - 1).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// `struct ifreq` as TUNSETIFF and SIOC[GS]IFFLAGS use it: the name, then a short of flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str) -> IfReq {
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        let len = name.len().min(MAX_NAME_LEN);
        req.name[..len].copy_from_slice(&name.as_bytes()[..len]);
        req
    }
}

/// An open tap device (or, in tests, any packet-preserving file descriptor).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    /// False for the test stand-in: no tap ioctls.
    is_tap: bool,
}

impl Tap {
    /// Opens the tap device `name`. It must exist unless `create` is set, in which case TUNSETIFF
    /// creates it (a non-persistent tap that goes away with this process) and it is brought up.
    pub fn open(name: &str, create: bool) -> Result<Tap, Error> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains(['/', ' ', '\0']) {
            return Err(Error::TapName {
                name: name.to_string(),
            });
        }
        let exists = interface_exists(name);
        if !exists && !create {
            return Err(Error::TapMissing {
                name: name.to_string(),
            });
        }
        let tap_err = |what: &'static str| {
            move |error: io::Error| Error::Tap {
                name: name.to_string(),
                what,
                error,
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(tap_err("open /dev/net/tun"))?;
        let mut req = IfReq::new(name);
        req.flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is laid out as; the fd is
        // ours and open.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if ret < 0 {
            let error = io::Error::last_os_error();
            return Err(match error.raw_os_error() {
                Some(libc::EBUSY) => Error::TapBusy {
                    name: name.to_string(),
                },
                Some(libc::EINVAL) if exists => Error::TapNotTap {
                    name: name.to_string(),
                },
                _ => Error::Tap {
                    name: name.to_string(),
                    what: "attach to it (TUNSETIFF)",
                    error,
                },
            });
        }
        let tap = Tap {
            file,
            name: name.to_string(),
            is_tap: true,
        };
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer; the fd is an attached tap.
        let ret = unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if ret < 0 {
            return Err(tap_err("set the vnet header size (TUNSETVNETHDRSZ)")(
                io::Error::last_os_error(),
            ));
        }
        tap.set_offload(0)?;
        if !exists {
            match set_up(name) {
                Ok(()) => log::warn!(
                    "created tap device '{name}' and brought it up; it goes away when vmm exits. \
                     Give it an address (ip addr add 192.168.100.1/24 dev {name}) or add it to a bridge \
                     to reach the guest"
                ),
                Err(e) => log::warn!(
                    "created tap device '{name}' but could not bring it up ({e}); run \
                     'ip link set {name} up' and give it an address or a bridge to reach the guest"
                ),
            }
        }
        Ok(tap)
    }

    /// A stand-in for tests: any descriptor that keeps message boundaries (a SOCK_SEQPACKET
    /// socket), carrying the same vnet-header-prefixed frames a tap would.
    pub fn from_fd(fd: OwnedFd, name: &str) -> Tap {
        Tap {
            file: File::from(fd),
            name: name.to_string(),
            is_tap: false,
        }
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// TUNSETOFFLOAD: which offloads the tap may hand over in frames it passes to us (TUN_F_*).
    pub fn set_offload(&self, flags: u32) -> Result<(), Error> {
        if !self.is_tap {
            return Ok(());
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value; the fd is an attached tap.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(Error::Tap {
                name: self.name.clone(),
                what: "set offloads (TUNSETOFFLOAD)",
                error: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Reads one frame (vnet header included) into `buf`; `WouldBlock` when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the fd is ours.
            let n =
                unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }

    /// Writes one frame gathered from `iovs` (vnet header first) with a single writev.
    ///
    /// # Safety
    /// Every iovec must describe memory valid for reads for the duration of the call.
    pub unsafe fn writev(&self, iovs: &[libc::iovec]) -> io::Result<usize> {
        let count = libc::c_int::try_from(iovs.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        loop {
            // SAFETY: the caller guarantees the iovecs; the fd is ours.
            let n = unsafe { libc::writev(self.file.as_raw_fd(), iovs.as_ptr(), count) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// Whether a network interface called `name` exists (in this network namespace).
fn interface_exists(name: &str) -> bool {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `cname` is a valid NUL-terminated string; if_nametoindex only reads it.
    unsafe { libc::if_nametoindex(cname.as_ptr()) != 0 }
}

/// Sets IFF_UP on interface `name` (needs CAP_NET_ADMIN).
fn set_up(name: &str) -> io::Result<()> {
    // SAFETY: socket() with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq::new(name);
    // SAFETY: SIOCGIFFLAGS fills the flags of the `struct ifreq` `req` is laid out as.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    req.flags |= libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the `struct ifreq` `req` is laid out as.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

//! The virtio-fs device: config space (tag, one request queue), requests from the queues to the
//! server, replies from the server to the guest.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::Child;

use log::{error, warn};
use vm_memory::GuestAddress;

use super::wire::{self, RequestFrame, IN_HEADER_LEN, MAX_PAYLOAD, OUT_HEADER_LEN};
use super::{HIPRIO_QUEUE, QUEUE_SIZE, REQUEST_QUEUE, TAG_LEN, VIRTIO_ID_FS};
use crate::virtio::buffers::{gather, scatter, split, total};
use crate::virtio::{Step, VirtioCore, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::{Error, GuestMemoryMmap};

/// Request bytes the device holds for a server that does not read them yet; beyond, it takes no
/// more chains until the server catches up.
const OUT_LIMIT: usize = 4 << 20;
/// How long the device waits for its server to end once told to.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    /// Requests passed to the server.
    pub requests: u64,
    /// Replies passed to the guest.
    pub replies: u64,
    /// Chains that broke the rules (answered with nothing, or EIO where there was room).
    pub bad_chains: u64,
    /// Requests failed because the server was gone or its reply did not fit.
    pub failed: u64,
}

/// A request the server has not answered yet.
struct Pending {
    queue: usize,
    head: u16,
    /// The guest's buffers for the reply.
    reply: Vec<(GuestAddress, u32)>,
    /// The guest's `unique`, put back in the reply.
    unique: u64,
}

/// A virtio-fs device for the share tagged `tag`, its server at the other end of `socket`.
///
/// Queues: hiprio (0) and one request queue (1), [`QUEUE_SIZE`] each. Features: VERSION_1,
/// EVENT_IDX.
pub struct Fs {
    pub(super) core: VirtioCore,
    tag: String,
    pub(super) socket: OwnedFd,
    /// The server's process and a pidfd of it, to stop and reap it (none in unit tests).
    server: Option<(Child, OwnedFd)>,
    /// Why the server is gone; then every request fails with EIO.
    pub(super) gone: Option<String>,
    pending: HashMap<u64, Pending>,
    /// The (queue, head) of every chain in `pending`: a driver that posts one again before it
    /// was returned breaks the ring's rules (and would make `pending` grow without bound).
    held: HashSet<(usize, u16)>,
    next_unique: u64,
    /// Framed requests not yet written to the socket, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    /// Reply bytes read so far, `in_len` of them.
    input: Vec<u8>,
    in_len: usize,
    stats: FsStats,
    /// What the event loop watches the socket for.
    pub(super) watched: event_manager::EventSet,
}

impl Fs {
    /// A device for `tag` (1 to [`TAG_LEN`] bytes, no NUL), its server on `socket` (made
    /// non-blocking here), `server` its process if the device should reap it.
    pub fn new(tag: &str, socket: OwnedFd, server: Option<Child>) -> Result<Self, Error> {
        if tag.is_empty() || tag.len() > TAG_LEN || tag.contains('\0') {
            return Err(Error::FsTag {
                tag: tag.to_string(),
            });
        }
        set_nonblocking(&socket).map_err(|error| Error::FsSocket { error })?;
        let server = match server {
            Some(child) => {
                let pidfd = pidfd_open(&child).map_err(|error| Error::FsSocket { error })?;
                Some((child, pidfd))
            }
            None => None,
        };
        let mut config = vec![0u8; TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        // num_request_queues
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        Ok(Fs {
            core: VirtioCore::new(
                format!("virtio-fs '{tag}'"),
                VIRTIO_ID_FS,
                (1u64 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX),
                &[QUEUE_SIZE; 2],
                config,
            )?,
            tag: tag.to_string(),
            socket,
            server,
            gone: None,
            pending: HashMap::new(),
            held: HashSet::new(),
            next_unique: 1,
            out: Vec::new(),
            out_pos: 0,
            input: vec![0; MAX_PAYLOAD + OUT_HEADER_LEN],
            in_len: 0,
            stats: FsStats::default(),
            watched: event_manager::EventSet::empty(),
        })
    }

    /// The share's tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The counters.
    pub fn stats(&self) -> FsStats {
        self.stats
    }

    /// Requests the server has not answered.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The socket's descriptor, for the event loop.
    pub(super) fn socket_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Whether framed requests wait for the socket to take them.
    pub(super) fn has_output(&self) -> bool {
        self.gone.is_none() && self.out_pos < self.out.len()
    }

    /// Takes the chains of queue `q`: each request is framed for the server (or, with no server,
    /// answered with EIO at once).
    pub(super) fn process_queue(&mut self, q: usize) {
        let Fs {
            core,
            gone,
            pending,
            held,
            next_unique,
            out,
            out_pos,
            stats,
            ..
        } = self;
        let mut bad = Vec::new();
        let mut reposted = None;
        core.drain(q, usize::from(QUEUE_SIZE), |mem, chain| {
            if out.len() - *out_pos > OUT_LIMIT {
                return Step::Unpop;
            }
            let head = chain.head_index();
            if held.contains(&(q, head)) {
                reposted = Some(head);
                return Step::Unpop;
            }
            let Some((request, reply)) = split(chain) else {
                bad.push(format!(
                    "queue {q} chain {head}: a readable buffer after a writable one"
                ));
                return Step::Used(0);
            };
            let len = total(&request);
            let mut header = [0u8; IN_HEADER_LEN];
            if !(IN_HEADER_LEN..=MAX_PAYLOAD).contains(&len)
                || !gather(mem, &request, 0, &mut header)
            {
                bad.push(format!("queue {q} chain {head}: a request of {len} bytes"));
                let unique = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
                return Step::Used(write_error(mem, &reply, unique, libc::EINVAL));
            }
            let opcode = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            let guest_unique = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
            let replies = wire::expects_reply(opcode);
            let room = total(&reply).min(MAX_PAYLOAD + OUT_HEADER_LEN);
            if replies && room < OUT_HEADER_LEN {
                bad.push(format!(
                    "queue {q} chain {head}: {room} bytes of room for a reply"
                ));
                return Step::Used(0);
            }
            if gone.is_some() {
                stats.failed += 1;
                return Step::Used(write_error(mem, &reply, guest_unique, libc::EIO));
            }
            let unique = *next_unique;
            *next_unique += 1;
            let start = out.len();
            let frame = RequestFrame {
                len: len as u32,
                reply_room: room as u32,
            };
            out.extend_from_slice(&frame.to_bytes());
            out.resize(start + RequestFrame::LEN + len, 0);
            let body = &mut out[start + RequestFrame::LEN..];
            if !gather(mem, &request, 0, body) {
                out.truncate(start);
                bad.push(format!(
                    "queue {q} chain {head}: request outside guest memory"
                ));
                return Step::Used(0);
            }
            // The length the guest really posted, and the device's own unique.
            body[..4].copy_from_slice(&(len as u32).to_le_bytes());
            body[8..16].copy_from_slice(&unique.to_le_bytes());
            stats.requests += 1;
            if !replies {
                return Step::Used(0);
            }
            held.insert((q, head));
            pending.insert(
                unique,
                Pending {
                    queue: q,
                    head,
                    reply,
                    unique: guest_unique,
                },
            );
            Step::Held
        });
        for why in bad {
            self.bad(&why);
        }
        if let Some(head) = reposted {
            self.core.fail(&format!(
                "queue {q}: chain {head} made available again while the device holds it"
            ));
        }
    }

    /// Serves both queues, then writes what the socket takes.
    pub(super) fn process_queues(&mut self) {
        self.process_queue(HIPRIO_QUEUE);
        self.process_queue(REQUEST_QUEUE);
        self.flush();
    }

    /// Writes framed requests until the socket is full.
    pub(super) fn flush(&mut self) {
        while self.has_output() {
            let rest = &self.out[self.out_pos..];
            // SAFETY: writes from a live buffer of the length given to a descriptor we own.
            let n =
                unsafe { libc::write(self.socket.as_raw_fd(), rest.as_ptr().cast(), rest.len()) };
            match outcome(n) {
                Io::Done(n) => self.out_pos += n,
                Io::Again => break,
                Io::Retry => continue,
                Io::Failed(e) => return self.server_gone(&format!("cannot be written to ({e})")),
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos > OUT_LIMIT {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    /// Reads replies until the socket is empty, and hands each to the guest.
    pub(super) fn read_replies(&mut self) {
        // At most this many reads per event: the event loop comes back (level-triggered).
        for _ in 0..64 {
            if self.gone.is_some() {
                return;
            }
            let free = &mut self.input[self.in_len..];
            // SAFETY: reads into a live buffer of the length given from a descriptor we own.
            let n = unsafe {
                libc::read(
                    self.socket.as_raw_fd(),
                    free.as_mut_ptr().cast(),
                    free.len(),
                )
            };
            match outcome(n) {
                Io::Done(0) => return self.server_gone("closed its socket"),
                Io::Done(n) => self.in_len += n,
                Io::Again => break,
                Io::Retry => continue,
                Io::Failed(e) => return self.server_gone(&format!("cannot be read from ({e})")),
            }
            if !self.take_replies() {
                return;
            }
        }
    }

    /// Hands every whole reply read so far to the guest; false if the server broke the framing
    /// (then it is gone).
    fn take_replies(&mut self) -> bool {
        let mut at = 0;
        let mut used = [false; 2];
        while self.in_len - at >= OUT_HEADER_LEN {
            let b = &self.input[at..self.in_len];
            let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
            if !(OUT_HEADER_LEN..=MAX_PAYLOAD + OUT_HEADER_LEN).contains(&len) {
                self.server_gone(&format!("sent a reply of {len} bytes"));
                return false;
            }
            if b.len() < len {
                break;
            }
            let unique = u64::from_le_bytes(b[8..16].try_into().unwrap_or_default());
            if let Some(p) = self.pending.remove(&unique) {
                self.held.remove(&(p.queue, p.head));
                self.input[at + 8..at + 16].copy_from_slice(&p.unique.to_le_bytes());
                let written = self.answer(&p, at, len);
                if self.core.add_used(p.queue, p.head, written) {
                    used[p.queue] = true;
                }
            }
            at += len;
        }
        self.input.copy_within(at..self.in_len, 0);
        self.in_len -= at;
        for (q, used) in used.into_iter().enumerate() {
            if used {
                self.core.notify_used(q);
            }
        }
        true
    }

    /// Copies the reply at `at..at + len` of the input to `p`'s buffers, or an EIO error if it
    /// does not fit there; returns the bytes written.
    fn answer(&mut self, p: &Pending, at: usize, len: usize) -> u32 {
        let Some(active) = self.core.active.as_ref() else {
            return 0;
        };
        if len <= total(&p.reply) && scatter(&active.mem, &p.reply, &self.input[at..at + len]) {
            self.stats.replies += 1;
            return len as u32;
        }
        // A reply larger than the room the server was told of: the server is at fault.
        self.stats.failed += 1;
        write_error(&active.mem, &p.reply, p.unique, libc::EIO)
    }

    /// The server is gone: says why once, fails every request in flight with EIO.
    pub(super) fn server_gone(&mut self, why: &str) {
        if self.gone.is_some() {
            return;
        }
        let status = match self.stop_server() {
            Some(status) => format!("; it {status}"),
            None => String::new(),
        };
        error!(
            "virtio-fs '{}': the share's server {why}{status}; the guest's file operations on it fail with EIO from now on",
            self.tag
        );
        self.gone = Some(why.to_string());
        self.out.clear();
        self.out_pos = 0;
        self.in_len = 0;
        self.held.clear();
        let pending: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
        let mut used = [false; 2];
        for p in pending {
            self.stats.failed += 1;
            let written = self.core.active.as_ref().map_or(0, |active| {
                write_error(&active.mem, &p.reply, p.unique, libc::EIO)
            });
            if self.core.add_used(p.queue, p.head, written) {
                used[p.queue] = true;
            }
        }
        for (q, used) in used.into_iter().enumerate() {
            if used {
                self.core.notify_used(q);
            }
        }
    }

    fn bad(&mut self, why: &str) {
        self.stats.bad_chains += 1;
        if self.stats.bad_chains == 1 {
            warn!(
                "{}: {why} (further bad chains are only counted)",
                self.core.name()
            );
        }
    }
}

/// What a read(2) or write(2) on the non-blocking socket came to.
enum Io {
    /// This many bytes.
    Done(usize),
    /// Nothing now (EAGAIN): the event loop comes back.
    Again,
    /// Interrupted: try again.
    Retry,
    /// Any other error.
    Failed(io::Error),
}

fn outcome(n: isize) -> Io {
    if n >= 0 {
        return Io::Done(n as usize);
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::WouldBlock => Io::Again,
        io::ErrorKind::Interrupted => Io::Retry,
        _ => Io::Failed(e),
    }
}

/// Writes an error reply (`-errno`, the guest's `unique`) into `reply`; the bytes written, 0 if
/// the buffers have no room for it.
fn write_error(
    mem: &GuestMemoryMmap,
    reply: &[(GuestAddress, u32)],
    unique: u64,
    errno: i32,
) -> u32 {
    let bytes = wire::error_reply(unique, errno);
    match scatter(mem, reply, &bytes) {
        true => bytes.len() as u32,
        false => 0,
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, integer arguments only.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl VirtioDevice for Fs {
    crate::virtio::core_accessors!(core);

    /// Requests in flight are the driver's again: their replies, if they come, are dropped.
    fn on_reset(&mut self) {
        self.pending.clear();
        self.held.clear();
    }
}

impl Fs {
    /// Stops the server: its socket is shut down (it ends when it reads the end), it is sent
    /// SIGKILL (which fails when a jail has made the VMM another user than the server), and it
    /// is reaped if it ends within [`STOP_WAIT`]. How it ended, if it did and there is one.
    fn stop_server(&mut self) -> Option<String> {
        let (child, pidfd) = self.server.as_mut()?;
        // SAFETY: shutdown on a descriptor we own.
        unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR) };
        kill(pidfd);
        let mut poll = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, alive for the call. A pidfd is readable once its process ends.
        let ended = unsafe { libc::poll(&mut poll, 1, STOP_WAIT.as_millis() as i32) } == 1;
        let status = match ended {
            true => match child.wait() {
                Ok(status) => status.to_string(),
                Err(e) => format!("cannot be reaped ({e})"),
            },
            false => format!("did not end within {} ms", STOP_WAIT.as_millis()),
        };
        self.server = None;
        Some(status)
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        self.stop_server();
    }
}

/// A pidfd of `child`: signals through it reach that process only, whatever its pid's fate.
fn pidfd_open(child: &Child) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open with a pid and no flags returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) })
}

/// Sends SIGKILL through `pidfd` (an error means the process is gone already).
fn kill(pidfd: &OwnedFd) {
    // SAFETY: a descriptor we own, a signal number, no siginfo, no flags.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
}

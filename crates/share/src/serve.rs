//! The server's loop: a framed request from the socket, its modes cleaned, served by the
//! passthrough file system, the reply written straight to the socket.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};

use devices::virtio::fs::wire::{self, RequestFrame, IN_HEADER_LEN, MAX_PAYLOAD, OUT_HEADER_LEN};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{FuseBuf, FuseDevWriter, Reader};

use crate::confine::Fs;

/// FUSE opcodes whose requests carry a mode.
const OP_SETATTR: u32 = 4;
const OP_MKNOD: u32 = 8;
const OP_MKDIR: u32 = 9;
const OP_CREATE: u32 = 35;
/// `FATTR_MODE` in a SETATTR's `valid`.
const FATTR_MODE: u32 = 1;
/// `FUSE_INIT`, and the flags [`widen_init_reply`] agrees to: reads in parallel, writes of more
/// than a page, and a `max_pages`.
const OP_INIT: u32 = 26;
const FUSE_ASYNC_READ: u32 = 1;
const FUSE_BIG_WRITES: u32 = 1 << 5;
const FUSE_MAX_PAGES: u32 = 1 << 22;
/// The pages one read or write may carry: such a request and its headers fit the device's queue
/// without indirect descriptors.
const MAX_PAGES: u16 = devices::virtio::fs::QUEUE_SIZE / 2;
const PAGE_SIZE: u32 = 4096;

/// Serves requests until the socket is closed (`Ok`) or broken. `init_pipe` (read end, write end;
/// both non-blocking) takes the reply to an INIT, which [`widen_init_reply`] amends on its way to
/// the socket.
pub fn serve(fs: Fs, socket: &OwnedFd, init_pipe: &(OwnedFd, OwnedFd)) -> io::Result<()> {
    let server = Server::new(fs);
    let mut input = std::fs::File::from(socket.try_clone()?);
    let mut request = vec![0u8; MAX_PAYLOAD];
    let mut reply = vec![0u8; MAX_PAYLOAD + OUT_HEADER_LEN];
    loop {
        let mut frame = [0u8; RequestFrame::LEN];
        match input.read_exact(&mut frame) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let frame = RequestFrame::from_bytes(frame);
        let len = frame.len as usize;
        let room = (frame.reply_room as usize).min(reply.len());
        if !(IN_HEADER_LEN..=MAX_PAYLOAD).contains(&len) {
            return Err(io::Error::other(format!("a request frame of {len} bytes")));
        }
        let request = &mut request[..len];
        input.read_exact(request)?;
        let opcode = u32::from_le_bytes([request[4], request[5], request[6], request[7]]);
        // The device sends a request that gets a reply only with room for one.
        if wire::expects_reply(opcode) && room < OUT_HEADER_LEN {
            return Err(io::Error::other(format!(
                "request {opcode} with {room} bytes for its reply"
            )));
        }
        clear_set_id_bits(request);
        let unique = u64::from_le_bytes(request[8..16].try_into().unwrap_or_default());
        let init_flags = (opcode == OP_INIT).then(|| le_u32(request, IN_HEADER_LEN + 12));
        let reader = Reader::<()>::from_fuse_buffer(FuseBuf::new(request))
            .map_err(|e| io::Error::other(format!("read a request: {e}")))?;
        let to = if init_flags.is_some() {
            &init_pipe.1
        } else {
            socket
        };
        let writer = FuseDevWriter::<()>::new(to.as_raw_fd(), &mut reply[..room])
            .map_err(|e| io::Error::other(format!("set up a reply: {e}")))?;
        let handled = server.handle_message(reader, writer.into(), None, None);
        if let Some(flags) = init_flags {
            forward_init_reply(&init_pipe.0, flags.unwrap_or(0), socket)?;
        }
        if let Err(e) = handled {
            log::debug!("request {opcode} failed: {e}");
            // Nothing was sent (a request the parser could not read): the device still waits for
            // an answer. If a reply did go out, the device drops this second one.
            if wire::expects_reply(opcode) {
                write_all(socket, &wire::error_reply(unique, libc::EIO))?;
            }
        }
    }
}

/// Clears S_ISUID and S_ISGID from the mode of a SETATTR, MKNOD or CREATE, and S_ISUID from a
/// MKDIR's (a set-gid directory only passes its group on): a guest cannot leave a set-uid or
/// set-gid program on the host.
fn clear_set_id_bits(request: &mut [u8]) {
    let opcode = u32::from_le_bytes([request[4], request[5], request[6], request[7]]);
    let body = IN_HEADER_LEN;
    let (at, bits) = match opcode {
        OP_SETATTR => {
            let valid = le_u32(request, body).unwrap_or(0);
            if valid & FATTR_MODE == 0 {
                return;
            }
            // fuse_setattr_in: valid, padding, fh, size, lock_owner, atime, mtime, ctime,
            // atimensec, mtimensec, ctimensec, mode.
            (body + 68, libc::S_ISUID | libc::S_ISGID)
        }
        // fuse_mknod_in and fuse_mkdir_in start with the mode.
        OP_MKNOD => (body, libc::S_ISUID | libc::S_ISGID),
        OP_MKDIR => (body, libc::S_ISUID),
        // fuse_create_in: flags, mode.
        OP_CREATE => (body + 4, libc::S_ISUID | libc::S_ISGID),
        _ => return,
    };
    if let Some(mode) = le_u32(request, at) {
        request[at..at + 4].copy_from_slice(&(mode & !bits).to_le_bytes());
    }
}

/// Moves the INIT reply waiting in the pipe `from` (if any: an INIT the parser refused has none)
/// to the socket, widened for a guest that offered `flags`.
fn forward_init_reply(from: &OwnedFd, flags: u32, socket: &OwnedFd) -> io::Result<()> {
    let mut reply = [0u8; 256];
    // SAFETY: reads into a live buffer of the length given, from a descriptor we own.
    let n = unsafe { libc::read(from.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len()) };
    if n <= 0 {
        return Ok(());
    }
    let reply = &mut reply[..n as usize];
    widen_init_reply(flags, reply);
    write_all(socket, reply)
}

/// The passthrough file system answers an INIT without `FUSE_BIG_WRITES`, `FUSE_MAX_PAGES` or
/// `FUSE_ASYNC_READ` and with a `max_write` of one page, so a guest would split every write into
/// 4 KiB requests and wait for each read before the next. In a successful `reply`, this agrees to
/// those of the three the guest offered in `flags`, with writes and reads of [`MAX_PAGES`].
fn widen_init_reply(flags: u32, reply: &mut [u8]) {
    // fuse_out_header: len, error, unique; fuse_init_out: major, minor, max_readahead, flags,
    // max_background, congestion_threshold, max_write, time_gran, max_pages, ...
    const FLAGS: usize = OUT_HEADER_LEN + 12;
    const MAX_WRITE: usize = OUT_HEADER_LEN + 20;
    const MAX_PAGES_AT: usize = OUT_HEADER_LEN + 28;
    let offered = flags & (FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES);
    if offered == 0 || reply.len() < MAX_PAGES_AT + 2 || le_u32(reply, 4) != Some(0) {
        return;
    }
    let agreed = le_u32(reply, FLAGS).unwrap_or(0) | offered;
    reply[FLAGS..FLAGS + 4].copy_from_slice(&agreed.to_le_bytes());
    let max_write = u32::from(MAX_PAGES) * PAGE_SIZE;
    reply[MAX_WRITE..MAX_WRITE + 4].copy_from_slice(&max_write.to_le_bytes());
    reply[MAX_PAGES_AT..MAX_PAGES_AT + 2].copy_from_slice(&MAX_PAGES.to_le_bytes());
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn write_all(socket: &OwnedFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: writes from a live buffer of the length given to a descriptor we own.
        let n = unsafe { libc::write(socket.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(opcode: u32, body: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; IN_HEADER_LEN];
        r[4..8].copy_from_slice(&opcode.to_le_bytes());
        r.extend_from_slice(body);
        r
    }

    fn mode_at(r: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(r[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn set_id_bits_are_cleared_from_every_mode_a_guest_sends() {
        let mut create = request(OP_CREATE, &[0, 0, 0, 0, 0xed, 0x0d, 0, 0, 0, 0, 0, 0]);
        clear_set_id_bits(&mut create);
        assert_eq!(mode_at(&create, IN_HEADER_LEN + 4), 0o755);

        let mut mknod = request(OP_MKNOD, &(0o106755u32).to_le_bytes());
        clear_set_id_bits(&mut mknod);
        assert_eq!(mode_at(&mknod, IN_HEADER_LEN), 0o100755);

        let mut mkdir = request(OP_MKDIR, &(0o6775u32).to_le_bytes());
        clear_set_id_bits(&mut mkdir);
        assert_eq!(mode_at(&mkdir, IN_HEADER_LEN), 0o2775);

        let mut setattr_body = vec![0u8; 88];
        setattr_body[..4].copy_from_slice(&FATTR_MODE.to_le_bytes());
        setattr_body[68..72].copy_from_slice(&0o4755u32.to_le_bytes());
        let mut setattr = request(OP_SETATTR, &setattr_body);
        clear_set_id_bits(&mut setattr);
        assert_eq!(mode_at(&setattr, IN_HEADER_LEN + 68), 0o755);

        // Without FATTR_MODE the field is not a mode: left alone.
        setattr_body[..4].copy_from_slice(&0u32.to_le_bytes());
        let mut other = request(OP_SETATTR, &setattr_body);
        clear_set_id_bits(&mut other);
        assert_eq!(mode_at(&other, IN_HEADER_LEN + 68), 0o4755);

        // A request too short for its mode is left for the parser to refuse.
        let mut short = request(OP_CREATE, &[1, 2]);
        clear_set_id_bits(&mut short);
        assert_eq!(&short[IN_HEADER_LEN..], &[1, 2]);
    }

    fn init_reply(error: i32, len: usize) -> Vec<u8> {
        let mut r = vec![0u8; len];
        r[..4].copy_from_slice(&(len as u32).to_le_bytes());
        r[4..8].copy_from_slice(&error.to_le_bytes());
        r[OUT_HEADER_LEN + 12..OUT_HEADER_LEN + 16].copy_from_slice(&0x11u32.to_le_bytes());
        r[OUT_HEADER_LEN + 20..OUT_HEADER_LEN + 24].copy_from_slice(&4096u32.to_le_bytes());
        r
    }

    #[test]
    fn an_init_reply_agrees_only_to_what_the_guest_offered() {
        let mut reply = init_reply(0, OUT_HEADER_LEN + 64);
        // The guest offers MAX_PAGES, BIG_WRITES and flag 2 (not one of the three): the reply's own
        // flags (0x11) stay, the two are added, flag 2 is not.
        widen_init_reply(FUSE_MAX_PAGES | FUSE_BIG_WRITES | 2, &mut reply);
        assert_eq!(
            le_u32(&reply, OUT_HEADER_LEN + 12),
            Some(0x11 | FUSE_MAX_PAGES | FUSE_BIG_WRITES)
        );
        assert_eq!(le_u32(&reply, OUT_HEADER_LEN + 20), Some(128 * 4096));
        assert_eq!(
            &reply[OUT_HEADER_LEN + 28..OUT_HEADER_LEN + 30],
            &128u16.to_le_bytes()
        );
        assert_eq!(reply.len(), OUT_HEADER_LEN + 64);

        // Nothing offered, an error, or an old protocol's short reply: left as it is.
        for (flags, mut reply) in [
            (2, init_reply(0, OUT_HEADER_LEN + 64)),
            (
                FUSE_MAX_PAGES,
                init_reply(-libc::EPROTO, OUT_HEADER_LEN + 64),
            ),
            (FUSE_MAX_PAGES, init_reply(0, OUT_HEADER_LEN + 24)),
        ] {
            let before = reply.clone();
            widen_init_reply(flags, &mut reply);
            assert_eq!(reply, before);
        }
    }
}

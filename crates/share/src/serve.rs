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

/// Serves requests until the socket is closed (`Ok`) or broken.
pub fn serve(fs: Fs, socket: &OwnedFd, _readonly: bool) -> io::Result<()> {
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
        let reader = Reader::<()>::from_fuse_buffer(FuseBuf::new(request))
            .map_err(|e| io::Error::other(format!("read a request: {e}")))?;
        let writer = FuseDevWriter::<()>::new(socket.as_raw_fd(), &mut reply[..room])
            .map_err(|e| io::Error::other(format!("set up a reply: {e}")))?;
        if let Err(e) = server.handle_message(reader, writer.into(), None, None) {
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
            let valid = request
                .get(body..body + 4)
                .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
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
    if let Some(b) = request.get_mut(at..at + 4) {
        let mode = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & !bits;
        b.copy_from_slice(&mode.to_le_bytes());
    }
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
}

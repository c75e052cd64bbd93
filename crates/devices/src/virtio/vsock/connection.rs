//! One vsock connection: its host socket, its state, and the credit of both directions.
//!
//! Guest to host: the device advertises [`CONN_BUF`] as its `buf_alloc` and counts in `fwd_cnt`
//! the bytes the host socket took; what the socket did not take yet waits in `pending`, never
//! more than [`CONN_BUF`] bytes (a guest that sends beyond its credit is made to wait).
//! Host to guest: the device reads the host socket only while the guest's credit
//! (`peer_buf_alloc - (sent - peer_fwd_cnt)`) is positive, and at most that much.

use std::io::{self, ErrorKind};
use std::os::unix::net::UnixStream;

use event_manager::EventSet;

use super::unix;
use super::{CONN_BUF, VSOCK_FLAGS_SHUTDOWN_RCV, VSOCK_FLAGS_SHUTDOWN_SEND};
use crate::virtio::vsock::packet::Header;

/// (host port, guest port).
pub(super) type Key = (u32, u32);

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Started by a host program: the guest has been asked (REQUEST) and has not answered.
    Connecting,
    /// Both ends may exchange data.
    Established,
}

/// A credit update is owed once the host took this much since the guest last heard `fwd_cnt`.
const CREDIT_UPDATE_STEP: u32 = CONN_BUF / 4;

/// One connection; see the module documentation.
pub(super) struct Connection {
    pub(super) stream: UnixStream,
    pub(super) state: State,
    /// Guest output not yet taken by the host socket.
    pending: Vec<u8>,
    /// Guest bytes the host socket took.
    pub(super) fwd_cnt: u32,
    /// The `fwd_cnt` the guest last heard.
    pub(super) fwd_cnt_sent: u32,
    /// The guest's receive buffer and how much of what it was sent it has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Payload bytes sent to the guest.
    pub(super) sent: u32,
    /// The guest's SHUTDOWN flags so far.
    pub(super) peer_shut: u32,
    /// The host socket reached its end (read 0): a SHUTDOWN was owed to the guest.
    pub(super) host_eof: bool,
    /// The guest stops sending and the host's write side was shut.
    pub(super) host_write_shut: bool,
    /// epoll said the host socket has input (or it has not said otherwise yet).
    pub(super) host_readable: bool,
    /// The connection is on the muxer's ready list.
    pub(super) in_ready: bool,
    /// A credit update is queued.
    pub(super) credit_owed: bool,
    /// What the event loop watches on the host socket now (none: not registered).
    pub(super) registered: Option<EventSet>,
    /// Started by a host program: when it is closed if the guest has not answered by then.
    pub(super) answer_by: Option<std::time::Instant>,
}

impl Connection {
    pub(super) fn new(stream: UnixStream, state: State) -> Connection {
        Connection {
            stream,
            state,
            pending: Vec::new(),
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            sent: 0,
            peer_shut: 0,
            host_eof: false,
            host_write_shut: false,
            host_readable: true,
            in_ready: false,
            credit_owed: false,
            registered: None,
            answer_by: None,
        }
    }

    /// Takes the guest's credit from any header it sent.
    pub(super) fn update_peer_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
    }

    /// How many bytes the guest can take now. A guest that claims to have consumed more than it
    /// was sent, or shrinks its buffer below what is in flight, gets nothing.
    pub(super) fn peer_credit(&self) -> u32 {
        let in_flight = self.sent.wrapping_sub(self.peer_fwd_cnt);
        if in_flight > self.peer_buf_alloc {
            return 0;
        }
        self.peer_buf_alloc - in_flight
    }

    /// Whether the device should read the host socket: established, the host has not ended,
    /// the guest still receives and has credit.
    pub(super) fn wants_read(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && self.peer_shut & VSOCK_FLAGS_SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// Guest output waiting for the host socket.
    pub(super) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// What the event loop should watch on the host socket: input while the device wants to
    /// read and does not know it can; writability while output waits.
    pub(super) fn interest(&self) -> Option<EventSet> {
        let mut set = EventSet::empty();
        if self.wants_read() && !self.host_readable {
            set |= EventSet::IN;
        }
        if !self.pending.is_empty() {
            set |= EventSet::OUT;
        }
        (!set.is_empty()).then_some(set)
    }

    /// Whether `len` more bytes of guest output fit in what the device holds.
    pub(super) fn has_room(&self, len: usize) -> bool {
        self.pending.len() + len <= CONN_BUF as usize
    }

    /// Passes guest output to the host socket, keeping what it does not take (the caller
    /// checked [`Connection::has_room`]). An error means the host end is gone.
    pub(super) fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let mut done = 0;
        if self.pending.is_empty() {
            done = self.send(data)?;
        }
        self.pending.extend_from_slice(&data[done..]);
        Ok(())
    }

    /// Sends what waits; an error means the host end is gone.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let result = self.send(&pending);
        self.pending = pending;
        let n = result?;
        self.pending.drain(..n);
        Ok(())
    }

    /// Sends as much of `data` as the socket takes, counting it in `fwd_cnt`.
    fn send(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < data.len() {
            match unix::send(&self.stream, &data[done..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    done += n;
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Whether the guest should hear the host's progress: a CREDIT_UPDATE_STEP taken since.
    pub(super) fn credit_update_due(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= CREDIT_UPDATE_STEP
    }

    /// The guest sends no more and everything it sent was taken: shut the host's write side.
    pub(super) fn shut_host_write_if_done(&mut self) {
        if self.peer_shut & VSOCK_FLAGS_SHUTDOWN_SEND != 0
            && self.pending.is_empty()
            && !self.host_write_shut
        {
            self.host_write_shut = true;
            // The host end may be gone already; it will show when read.
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
    }

    /// Both directions are over (and the guest's output delivered): the connection can go.
    pub(super) fn finished(&self) -> bool {
        let guest_done = self.peer_shut & VSOCK_FLAGS_SHUTDOWN_SEND != 0;
        let host_done = self.host_eof || self.peer_shut & VSOCK_FLAGS_SHUTDOWN_RCV != 0;
        guest_done && host_done && self.pending.is_empty()
    }
}

//! The connections of a virtio-vsock device and what is owed to the guest.
//!
//! Connections are keyed by (host port, guest port). Packets the device owes the guest
//! (answers, resets, shutdowns, credit updates, requests from host programs) wait in `control`,
//! at most [`CONTROL_MAX`]; the device stops taking packets from the guest while it is nearly
//! full, so a guest that never posts receive buffers cannot make it grow. Connections with
//! host input to read, and credit for it, wait in `ready`, served in turn. A host program has
//! [`CONNECT_TIMEOUT`] to send its `CONNECT` line, and the guest as long again to answer the
//! REQUEST that follows: one timerfd on the event loop, armed for the oldest deadline, closes
//! those that did not come (and resets the guest's end of an unanswered request).

use std::collections::{HashMap, VecDeque};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events};
use log::{debug, warn};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{Connection, Key, State};
use super::packet::Header;
use super::unix;
use super::{
    CONNECT_LINE_MAX, CONNECT_TIMEOUT, CONN_BUF, FIRST_HOST_PORT, MAX_CONNS,
    VSOCK_FLAGS_SHUTDOWN_SEND, VSOCK_OP_CREDIT_REQUEST, VSOCK_OP_CREDIT_UPDATE, VSOCK_OP_REQUEST,
    VSOCK_OP_RESPONSE, VSOCK_OP_RST, VSOCK_OP_RW, VSOCK_OP_SHUTDOWN,
};
use crate::chardev::SocketFile;
use crate::Error;

/// Packets owed to the guest, at most.
pub(super) const CONTROL_MAX: usize = 2 * MAX_CONNS;
/// The device stops taking guest packets when fewer than this many control slots are free (one
/// guest packet owes at most two).
const CONTROL_RESERVE: usize = 4;
/// Host programs accepted per event on the listening socket.
const ACCEPT_BUDGET: usize = 64;
/// How long the listener rests after accept(2) failed.
const ACCEPT_RETRY: Duration = Duration::from_secs(1);
/// The deadline list's entry for the end of an accept pause (no socket has this number).
const PAUSE_FD: RawFd = -1;

/// What the muxer made of a guest packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Took {
    /// Done with (acted on, answered or dropped).
    Done,
    /// Not now: the connection holds as much guest output as it may. Try again when its host
    /// socket takes some.
    Later,
}

/// A host program that connected and has not yet sent its `CONNECT <port>\n` line.
struct Caller {
    stream: UnixStream,
    line: Vec<u8>,
    registered: bool,
    /// When it is closed if its line has not come.
    deadline: Instant,
}

/// The next packet for the guest, as the receive path fills it in.
pub(super) enum Outgoing {
    /// A packet without payload.
    Control(Header),
    /// Payload of this many bytes, read into the stage after the header.
    Data(Header, usize),
}

/// See the module documentation.
pub(super) struct Muxer {
    pub(super) guest_cid: u64,
    socket: SocketFile,
    /// Where guest connections go: `base_<port>` (PATH, or its file name alone when the
    /// working directory is its directory).
    base: PathBuf,
    conns: HashMap<Key, Connection>,
    callers: HashMap<RawFd, Caller>,
    by_fd: HashMap<RawFd, Key>,
    control: VecDeque<(Key, u16, u32)>,
    ready: VecDeque<Key>,
    next_port: u32,
    /// Sockets of closed connections still registered with the event loop.
    closed: Vec<UnixStream>,
    listener_registered: bool,
    /// Deadlines of callers (for their line) and of connections they started (for the guest's
    /// answer), in the order they were set (so in time order), with their sockets; entries of
    /// those gone since are skipped (and pruned when there are many).
    deadlines: VecDeque<(Instant, RawFd)>,
    /// Fires at the first deadline; on the event loop while the muxer lives.
    timer: TimerFd,
    timer_registered: bool,
    /// The deadline the timer is armed for.
    armed_for: Option<Instant>,
    /// How long a caller has for its `CONNECT` line ([`CONNECT_TIMEOUT`]; shorter in tests).
    pub(super) connect_timeout: Duration,
    /// accept(2) failed (out of descriptors, EMFILE or ENFILE, or another error): the listener is
    /// off the event loop until then, so a listener that stays readable cannot spin it.
    accept_paused: Option<Instant>,
    accept_failed_before: bool,
    /// Tests: this many accept(2) calls fail with EMFILE.
    #[cfg(test)]
    pub(super) fail_accepts: u32,
    /// The transmit queue was stopped (control nearly full, or a connection full).
    pub(super) tx_stalled: bool,
    /// Guest packets that broke the rules; the first is logged.
    pub(super) bad_packets: u64,
}

impl Muxer {
    pub(super) fn new(guest_cid: u64, socket: SocketFile) -> Result<Muxer, Error> {
        let base = socket.path().to_path_buf();
        Ok(Muxer {
            guest_cid,
            socket,
            base,
            conns: HashMap::new(),
            callers: HashMap::new(),
            by_fd: HashMap::new(),
            control: VecDeque::new(),
            ready: VecDeque::new(),
            next_port: FIRST_HOST_PORT,
            closed: Vec::new(),
            listener_registered: false,
            deadlines: VecDeque::new(),
            timer: crate::nonblocking_timer("virtio-vsock CONNECT time limit")?,
            timer_registered: false,
            armed_for: None,
            connect_timeout: CONNECT_TIMEOUT,
            accept_paused: None,
            accept_failed_before: false,
            #[cfg(test)]
            fail_accepts: 0,
            tx_stalled: false,
            bad_packets: 0,
        })
    }

    /// Guest connections go to `<file name>_<port>` in the working directory.
    pub(super) fn connect_by_name(&mut self) {
        // SocketFile::bind refuses a path without a file name.
        if let Some(name) = self.socket.path().file_name() {
            self.base = PathBuf::from(name);
        }
    }

    /// The listening socket.
    pub(super) fn socket(&self) -> &SocketFile {
        &self.socket
    }

    /// Open connections (and host programs that have not said where to).
    pub(super) fn len(&self) -> usize {
        self.conns.len() + self.callers.len()
    }

    /// Connections whose host end is still open: the ones a guest could still be using.
    pub(super) fn live(&self) -> usize {
        self.conns.values().filter(|c| !c.host_eof).count()
    }

    /// Whether anything waits for a receive buffer.
    pub(super) fn has_rx_work(&self) -> bool {
        !self.control.is_empty() || !self.ready.is_empty()
    }

    /// Whether guest packets may be taken now (room for their answers).
    pub(super) fn can_take(&self) -> bool {
        self.control.len() + CONTROL_RESERVE <= CONTROL_MAX
    }

    /// Drops every connection (device reset): their host sockets are closed.
    pub(super) fn reset(&mut self) {
        for (_, c) in self.conns.drain() {
            if c.registered.is_some() {
                self.closed.push(c.stream);
            }
        }
        for (_, c) in self.callers.drain() {
            if c.registered {
                self.closed.push(c.stream);
            }
        }
        // The timer may still fire: it finds nobody.
        self.deadlines.clear();
        self.by_fd.clear();
        self.control.clear();
        self.ready.clear();
        self.tx_stalled = false;
    }

    /// A guest packet that broke the rules: counted, the first logged.
    pub(super) fn bad(&mut self, why: &str) {
        self.bad_packets += 1;
        if self.bad_packets == 1 {
            warn!("virtio-vsock: {why} (further bad packets logged at debug level)");
        } else {
            debug!("virtio-vsock: {why}");
        }
    }

    fn owe(&mut self, key: Key, op: u16, flags: u32) {
        // Bounded by CONTROL_MAX: the transmit path stops first; host events owe at most two
        // per connection.
        self.control.push_back((key, op, flags));
    }

    /// Answers a guest packet for `key` with a reset.
    pub(super) fn reset_peer(&mut self, key: Key) {
        self.owe(key, VSOCK_OP_RST, 0);
    }

    fn mark_ready(&mut self, key: Key) {
        if let Some(c) = self.conns.get_mut(&key) {
            if !c.in_ready && c.host_readable && c.wants_read() {
                c.in_ready = true;
                self.ready.push_back(key);
            }
        }
    }

    /// Closes connection `key` (its host socket), optionally resetting the guest's end.
    fn close(&mut self, key: Key, reset_guest: bool) {
        if let Some(c) = self.conns.remove(&key) {
            self.by_fd.remove(&c.stream.as_raw_fd());
            if c.registered.is_some() {
                self.closed.push(c.stream);
            }
            if reset_guest {
                self.reset_peer(key);
            }
        }
    }

    /// After guest output or host input changed a connection: shut the host's write side when
    /// the guest is done sending, close when both directions are over.
    fn settle(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        c.shut_host_write_if_done();
        if c.finished() {
            self.close(key, true);
            return;
        }
        if c.credit_update_due() && !c.credit_owed {
            c.credit_owed = true;
            self.owe(key, VSOCK_OP_CREDIT_UPDATE, 0);
        }
    }

    /// Acts on a packet from the guest whose header passed [`super::packet::check`]; `data` is
    /// its payload (RW only).
    pub(super) fn on_guest_packet(&mut self, h: &Header, data: &[u8]) -> Took {
        let key = (h.dst_port, h.src_port);
        if h.op == VSOCK_OP_RST {
            self.close(key, false);
            return Took::Done;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            if h.op == VSOCK_OP_REQUEST {
                self.connect_to_host(key, h);
            } else {
                self.reset_peer(key);
            }
            return Took::Done;
        };
        c.update_peer_credit(h);
        match (c.state, h.op) {
            (State::Connecting, VSOCK_OP_RESPONSE) => {
                c.state = State::Established;
                c.answer_by = None;
                let ok = format!("OK {}\n", key.0);
                // A fresh socket takes a few bytes; if it does not, the caller is gone.
                match unix::send(&c.stream, ok.as_bytes()) {
                    Ok(n) if n == ok.len() => {}
                    _ => {
                        self.close(key, true);
                        return Took::Done;
                    }
                }
            }
            (State::Established, VSOCK_OP_RW) => {
                if c.peer_shut & VSOCK_FLAGS_SHUTDOWN_SEND != 0 {
                    self.bad(&format!("port {}: data after SHUTDOWN(SEND)", h.src_port));
                    self.close(key, true);
                    return Took::Done;
                }
                if !c.has_room(data.len()) {
                    self.tx_stalled = true;
                    return Took::Later;
                }
                if let Err(e) = c.write(data) {
                    debug!("virtio-vsock: port {}: host end gone: {e}", key.0);
                    self.close(key, true);
                    return Took::Done;
                }
            }
            (State::Established, VSOCK_OP_SHUTDOWN) => c.peer_shut |= h.flags,
            (State::Established, VSOCK_OP_CREDIT_UPDATE) => {}
            (State::Established, VSOCK_OP_CREDIT_REQUEST) => {
                if !c.credit_owed {
                    c.credit_owed = true;
                    self.owe(key, VSOCK_OP_CREDIT_UPDATE, 0);
                }
            }
            (state, op) => {
                self.bad(&format!(
                    "port {}: op {op} while the connection is {state:?}",
                    h.src_port
                ));
                self.close(key, true);
                return Took::Done;
            }
        }
        self.settle(key);
        self.mark_ready(key);
        Took::Done
    }

    /// A guest REQUEST to host port `key.0`: connect to `PATH_<port>`, answer RESPONSE or RST.
    fn connect_to_host(&mut self, key: Key, h: &Header) {
        if self.len() >= MAX_CONNS {
            self.bad(&format!(
                "port {}: more than {MAX_CONNS} connections",
                h.src_port
            ));
            self.reset_peer(key);
            return;
        }
        let path = unix::port_path(&self.base, key.0);
        match unix::connect(&path) {
            Ok(stream) => {
                let mut c = Connection::new(stream, State::Established);
                c.update_peer_credit(h);
                self.by_fd.insert(c.stream.as_raw_fd(), key);
                self.conns.insert(key, c);
                self.owe(key, VSOCK_OP_RESPONSE, 0);
                self.mark_ready(key);
            }
            Err(e) => {
                debug!(
                    "virtio-vsock: guest port {} to '{}': {e}",
                    key.1,
                    path.display()
                );
                self.reset_peer(key);
            }
        }
    }

    /// The header of the next control packet, with the connection's credit.
    fn header(&mut self, key: Key, op: u16, flags: u32) -> Header {
        let mut h = Header::to_guest(self.guest_cid, key.0, key.1, op);
        h.flags = flags;
        if let Some(c) = self.conns.get_mut(&key) {
            h.buf_alloc = CONN_BUF;
            h.fwd_cnt = c.fwd_cnt;
            c.fwd_cnt_sent = c.fwd_cnt;
            if op == VSOCK_OP_CREDIT_UPDATE {
                c.credit_owed = false;
            }
        }
        h
    }

    /// The next packet for a receive buffer with room for `room` payload bytes; data is read
    /// from the host socket into `stage` (at least `room` long). `None` when nothing waits.
    pub(super) fn next_for_guest(&mut self, stage: &mut [u8]) -> Option<Outgoing> {
        if let Some((key, op, flags)) = self.control.pop_front() {
            return Some(Outgoing::Control(self.header(key, op, flags)));
        }
        if stage.is_empty() {
            return None;
        }
        while let Some(key) = self.ready.pop_front() {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            if !c.wants_read() || !c.host_readable {
                c.in_ready = false;
                continue;
            }
            let n = stage.len().min(c.peer_credit() as usize);
            match unix::recv(&c.stream, &mut stage[..n]) {
                Ok(0) => {
                    c.in_ready = false;
                    c.host_eof = true;
                    let h = self.header(key, VSOCK_OP_SHUTDOWN, VSOCK_FLAGS_SHUTDOWN_SEND);
                    self.settle(key);
                    return Some(Outgoing::Control(h));
                }
                Ok(n) => {
                    c.sent = c.sent.wrapping_add(n as u32);
                    self.ready.push_back(key);
                    let mut h = self.header(key, VSOCK_OP_RW, 0);
                    h.len = n as u32;
                    return Some(Outgoing::Data(h, n));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    c.in_ready = false;
                    c.host_readable = false;
                }
                Err(e) => {
                    debug!("virtio-vsock: port {}: host read failed: {e}", key.0);
                    self.close(key, false);
                    return Some(Outgoing::Control(Header::to_guest(
                        self.guest_cid,
                        key.0,
                        key.1,
                        VSOCK_OP_RST,
                    )));
                }
            }
        }
        None
    }

    /// Whether `fd` is the listener, the timer, a caller or a connection of this muxer.
    pub(super) fn owns(&self, fd: RawFd) -> bool {
        fd == self.socket.listener().as_raw_fd()
            || fd == self.timer.as_raw_fd()
            || self.callers.contains_key(&fd)
            || self.by_fd.contains_key(&fd)
    }

    /// The event loop reports `events` on `fd`, one of [`Muxer::owns`]'.
    pub(super) fn on_host_event(&mut self, fd: RawFd, events: EventSet) {
        if fd == self.socket.listener().as_raw_fd() {
            self.accept_callers();
        } else if fd == self.timer.as_raw_fd() {
            self.expire_callers();
        } else if self.callers.contains_key(&fd) {
            self.read_connect_line(fd);
        } else if let Some(&key) = self.by_fd.get(&fd) {
            self.on_conn_event(key, events);
        }
    }

    /// An event while the device does not run (no driver yet, or it failed): callers are
    /// turned away, connections closed, so nothing keeps the event loop busy.
    pub(super) fn on_host_event_stopped(&mut self, fd: RawFd) {
        if fd == self.socket.listener().as_raw_fd() {
            for _ in 0..ACCEPT_BUDGET {
                match self.accept_one() {
                    Ok(Some(_)) => debug!("virtio-vsock: no driver; refusing a caller"),
                    Ok(None) => return,
                    Err(e) => return self.pause_accepting(&e),
                }
            }
        } else if fd == self.timer.as_raw_fd() {
            self.expire_callers();
        } else if let Some(caller) = self.callers.remove(&fd) {
            if caller.registered {
                self.closed.push(caller.stream);
            }
        } else if let Some(&key) = self.by_fd.get(&fd) {
            self.close(key, false);
        }
    }

    /// Host socket of `key` is readable and/or writable (or hung up).
    pub(super) fn on_conn_event(&mut self, key: Key, events: EventSet) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP) {
            c.host_readable = true;
        }
        if c.pending_len() > 0 {
            if let Err(e) = c.flush() {
                debug!("virtio-vsock: port {}: host end gone: {e}", key.0);
                self.close(key, true);
                return;
            }
        }
        self.settle(key);
        self.mark_ready(key);
    }

    /// Accepts waiting host programs (at most [`ACCEPT_BUDGET`]) and starts their clocks.
    fn accept_callers(&mut self) {
        self.accept_some();
        self.arm_timer();
    }

    fn accept_some(&mut self) {
        for _ in 0..ACCEPT_BUDGET {
            match self.accept_one() {
                Ok(Some(stream)) => {
                    if self.len() >= MAX_CONNS {
                        debug!("virtio-vsock: {MAX_CONNS} connections open; refusing a caller");
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    let deadline = Instant::now() + self.connect_timeout;
                    self.callers.insert(
                        fd,
                        Caller {
                            stream,
                            line: Vec::new(),
                            registered: false,
                            deadline,
                        },
                    );
                    self.deadlines.push_back((deadline, fd));
                }
                Ok(None) => return,
                Err(e) => return self.pause_accepting(&e),
            }
        }
    }

    fn accept_one(&mut self) -> std::io::Result<Option<UnixStream>> {
        #[cfg(test)]
        if self.fail_accepts > 0 {
            self.fail_accepts -= 1;
            return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
        }
        unix::accept(self.socket.listener())
    }

    /// Takes the listener off the event loop for [`ACCEPT_RETRY`] (the timer brings it back).
    fn pause_accepting(&mut self, e: &std::io::Error) {
        if self.accept_paused.is_some() {
            return;
        }
        // Logged once per device: a local user who can make it happen cannot fill the log.
        if !self.accept_failed_before {
            self.accept_failed_before = true;
            warn!("virtio-vsock: cannot accept host programs ({e}); trying again every {ACCEPT_RETRY:?}");
        } else {
            debug!("virtio-vsock: cannot accept host programs ({e})");
        }
        let until = Instant::now() + ACCEPT_RETRY;
        self.accept_paused = Some(until);
        let at = self.deadlines.partition_point(|&(d, _)| d <= until);
        self.deadlines.insert(at, (until, PAUSE_FD));
        self.arm_timer();
    }

    /// Whether the listener is watched for host programs (not paused after a failed accept).
    #[cfg(test)]
    pub(super) fn accepting(&self) -> bool {
        self.accept_paused.is_none()
    }

    /// The timer fired (or may have): closes the callers whose time is up, then arms the timer for
    /// the next deadline.
    fn expire_callers(&mut self) {
        // Non-blocking: re-arming in between may have cleared the expiry.
        let _ = self.timer.wait();
        self.armed_for = None;
        let now = Instant::now();
        while let Some(&(deadline, fd)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if fd == PAUSE_FD {
                if self.accept_paused == Some(deadline) {
                    self.accept_paused = None;
                }
                continue;
            }
            if let Some(key) = self.unanswered(deadline, fd) {
                debug!("virtio-vsock: the guest did not answer a request in time; closed");
                self.close(key, true);
                continue;
            }
            // The same descriptor may be a newer caller's by now: only its own deadline counts.
            if self
                .callers
                .get(&fd)
                .is_some_and(|c| c.deadline == deadline)
            {
                if let Some(caller) = self.callers.remove(&fd) {
                    debug!("virtio-vsock: a caller did not send its CONNECT line in time; closed");
                    if caller.registered {
                        self.closed.push(caller.stream);
                    }
                }
            }
        }
        self.arm_timer();
    }

    /// The connection on `fd` whose request the guest has not answered, if `deadline` is its.
    fn unanswered(&self, deadline: Instant, fd: RawFd) -> Option<Key> {
        let key = *self.by_fd.get(&fd)?;
        let c = self.conns.get(&key)?;
        (c.state == State::Connecting && c.answer_by == Some(deadline)).then_some(key)
    }

    /// Keeps the deadline list to the callers and requests still waiting once it is long, and the
    /// timer armed for the first of them.
    fn arm_timer(&mut self) {
        if self.deadlines.len() > 2 * MAX_CONNS {
            let mut live = std::mem::take(&mut self.deadlines);
            live.retain(|&(d, fd)| {
                (fd == PAUSE_FD && self.accept_paused == Some(d))
                    || self.callers.get(&fd).is_some_and(|c| c.deadline == d)
                    || self.unanswered(d, fd).is_some()
            });
            self.deadlines = live;
        }
        let Some(&(first, _)) = self.deadlines.front() else {
            return;
        };
        if self.armed_for.is_some_and(|at| at <= first) {
            return;
        }
        // A zero duration would disarm the timer.
        let wait = first
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        match self.timer.reset(wait, None) {
            Ok(()) => self.armed_for = Some(first),
            Err(e) => warn!("virtio-vsock: cannot arm the CONNECT time limit: {e}"),
        }
    }

    /// Reads a caller's `CONNECT <port>\n`, a byte at a time (nothing past the line is taken
    /// from the socket); a line too long, not of that form, or an early end closes the caller.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(caller) = self.callers.get_mut(&fd) else {
            return;
        };
        let port = loop {
            let mut b = [0u8; 1];
            match unix::recv(&caller.stream, &mut b) {
                Ok(1) if b[0] == b'\n' => break parse_connect(&caller.line),
                Ok(1) if caller.line.len() < CONNECT_LINE_MAX => caller.line.push(b[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                _ => break None,
            }
        };
        let Some(caller) = self.callers.remove(&fd) else {
            return;
        };
        let Some(port) = port else {
            debug!("virtio-vsock: a caller did not send CONNECT <port>; closed");
            if caller.registered {
                self.closed.push(caller.stream);
            }
            return;
        };
        let Some(local) = self.free_port(port) else {
            if caller.registered {
                self.closed.push(caller.stream);
            }
            return;
        };
        let key = (local, port);
        let mut c = Connection::new(caller.stream, State::Connecting);
        c.registered = caller.registered.then_some(EventSet::IN);
        let deadline = Instant::now() + self.connect_timeout;
        c.answer_by = Some(deadline);
        self.deadlines.push_back((deadline, fd));
        self.by_fd.insert(fd, key);
        self.conns.insert(key, c);
        self.owe(key, VSOCK_OP_REQUEST, 0);
        self.arm_timer();
    }

    /// A host port for a connection to guest port `peer`, not in use.
    fn free_port(&mut self, peer: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNS {
            let p = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            if !self.conns.contains_key(&(p, peer)) {
                return Some(p);
            }
        }
        None
    }

    /// Brings the event loop's watch list in line: the listener, callers, each connection's
    /// [`Connection::interest`]; drops closed sockets.
    pub(super) fn sync(&mut self, ops: &mut EventOps) {
        for stream in self.closed.drain(..) {
            let _ = ops.remove(Events::new_raw(stream.as_raw_fd(), EventSet::empty()));
        }
        let fd = self.socket.listener().as_raw_fd();
        match (self.listener_registered, self.accept_paused.is_some()) {
            (false, false) => match ops.add(Events::new_raw(fd, EventSet::IN)) {
                Ok(()) => self.listener_registered = true,
                Err(e) => warn!("virtio-vsock: cannot watch the listening socket: {e}"),
            },
            (true, true) => {
                let _ = ops.remove(Events::new_raw(fd, EventSet::empty()));
                self.listener_registered = false;
            }
            _ => {}
        }
        if !self.timer_registered {
            match ops.add(Events::new_raw(self.timer.as_raw_fd(), EventSet::IN)) {
                Ok(()) => self.timer_registered = true,
                Err(e) => warn!("virtio-vsock: cannot watch the CONNECT timer: {e}"),
            }
        }
        for (&fd, caller) in self.callers.iter_mut() {
            if !caller.registered {
                match ops.add(Events::new_raw(fd, EventSet::IN)) {
                    Ok(()) => caller.registered = true,
                    Err(e) => warn!("virtio-vsock: cannot watch a caller: {e}"),
                }
            }
        }
        for c in self.conns.values_mut() {
            let want = c.interest();
            if want == c.registered {
                continue;
            }
            let fd = c.stream.as_raw_fd();
            let result = match (c.registered, want) {
                (None, Some(set)) => ops.add(Events::new_raw(fd, set)),
                (Some(_), Some(set)) => ops.modify(Events::new_raw(fd, set)),
                (Some(_), None) => ops.remove(Events::new_raw(fd, EventSet::empty())),
                (None, None) => Ok(()),
            };
            match result {
                Ok(()) => c.registered = want,
                Err(e) => warn!("virtio-vsock: cannot watch a host socket: {e}"),
            }
        }
    }

    #[cfg(test)]
    pub(super) fn conn(&self, key: Key) -> Option<&Connection> {
        self.conns.get(&key)
    }

    /// Every connection's and caller's host socket descriptor (tests drive them by hand).
    #[cfg(test)]
    pub(super) fn fds(&self) -> Vec<RawFd> {
        let mut v: Vec<RawFd> = self.callers.keys().copied().collect();
        v.extend(self.by_fd.keys().copied());
        v.push(self.socket.listener().as_raw_fd());
        v
    }

    /// The CONNECT line timer's descriptor.
    #[cfg(test)]
    pub(super) fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        self.socket.remove();
    }
}

/// `CONNECT <port>` (without the newline) to the port.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.strip_prefix("CONNECT ")?.trim_end_matches('\r');
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_connect;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        for bad in [
            &b"CONNECT 4294967296"[..],
            b"CONNECT",
            b"CONNECT ",
            b"CONNECT -1",
            b"CONNECT +1",
            b"connect 1",
            b"CONNECT 1 2",
            b"\xff",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }
}

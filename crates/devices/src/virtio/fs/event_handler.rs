//! The event-loop side of virtio-fs: queue notifications and the server's socket (replies in;
//! requests out while it is writable and requests wait).

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::debug;

use super::Fs;

impl Fs {
    /// Watches the socket for replies, and for room while requests wait; not at all once the
    /// server is gone.
    fn sync_socket(&mut self, ops: &mut EventOps) {
        let fd = self.socket_fd();
        let want = match (self.gone.is_some(), self.has_output()) {
            (true, _) => EventSet::empty(),
            (false, false) => EventSet::IN,
            (false, true) => EventSet::IN | EventSet::OUT,
        };
        if want == self.watched {
            return;
        }
        let result = match (self.watched.is_empty(), want.is_empty()) {
            (_, true) => ops.remove(Events::new_raw(fd, self.watched)),
            (true, false) => ops.add(Events::new_raw(fd, want)),
            (false, false) => ops.modify(Events::new_raw(fd, want)),
        };
        match result {
            Ok(()) => self.watched = want,
            Err(e) => debug!(
                "{}: cannot watch the server's socket: {e}",
                self.core.name()
            ),
        }
    }
}

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        self.core.watch(ops, None);
        self.sync_socket(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.socket_fd() {
            let set = events.event_set();
            if set.contains(EventSet::IN) || set.contains(EventSet::HANG_UP) {
                self.read_replies();
            }
            if set.contains(EventSet::HANG_UP) || set.contains(EventSet::ERROR) {
                // Replies already sent were read above.
                self.server_gone("closed its socket");
            }
            // Room on the socket, or replies freed the guest's queue: take what waits.
            self.process_queues();
        } else if self.core.queue_event(fd).is_some() {
            self.process_queues();
        } else {
            debug!("{}: unexpected event on fd {fd}", self.core.name());
        }
        self.sync_socket(ops);
    }
}

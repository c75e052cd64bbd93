//! The event-loop side of virtio-vsock: queue notifications, the listening socket, host
//! programs saying where to connect, and each connection's host socket.

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::debug;

use super::{Vsock, EVENT_QUEUE, RX_QUEUE, TX_QUEUE};

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        self.core.watch(ops, None);
        self.muxer.sync(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        match self.core.queue_event(fd) {
            Some(RX_QUEUE) => {}
            Some(TX_QUEUE) => self.process_tx(),
            // The only event is the transport reset owed after a restore.
            Some(EVENT_QUEUE) => self.process_events(),
            Some(_) => {}
            None if self.muxer.owns(fd) => {
                if self.core.is_running() {
                    self.muxer.on_host_event(fd, events.event_set());
                } else {
                    self.muxer.on_host_event_stopped(fd);
                }
            }
            None => debug!("virtio-vsock: unexpected event on fd {fd}"),
        }
        self.run();
        self.muxer.sync(ops);
    }
}

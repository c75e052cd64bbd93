//! The event-loop side of virtio-console: queue notifications, the backend's events (input,
//! writable again, socket clients), and terminal resizes.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, warn};

use super::resize;
use super::{Console, RX_QUEUE, TX_QUEUE};

impl MutEventSubscriber for Console {
    fn init(&mut self, ops: &mut EventOps) {
        for evt in &self.queue_evts {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                warn!("virtio-console: cannot watch queue event: {e}");
            }
        }
        if let Some(evt) = &self.resize_evt {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                warn!("virtio-console: cannot watch terminal resizes: {e}");
            }
        }
        self.chardev.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.queue_evts[RX_QUEUE].as_raw_fd() {
            // Non-blocking eventfd: an error only means no notification was pending.
            let _ = self.queue_evts[RX_QUEUE].read();
            // New receive buffers: deliver what is pending, then input may flow again.
            self.process_rx();
        } else if fd == self.queue_evts[TX_QUEUE].as_raw_fd() {
            let _ = self.queue_evts[TX_QUEUE].read();
            self.process_tx();
        } else if self.resize_evt.as_ref().map(|e| e.as_raw_fd()) == Some(fd) {
            if let Some(evt) = &self.resize_evt {
                let _ = evt.read();
            }
            if let Some((cols, rows)) = resize::stdio_terminal_size() {
                self.set_size(cols, rows);
            }
        } else if self.chardev.owns(fd) {
            let ready = self.chardev.handle_event(&events);
            if ready.writable {
                self.process_tx();
            }
            if ready.input {
                self.on_input();
            }
        } else {
            debug!("virtio-console: unexpected event on fd {fd}");
        }
        self.update_input_pause();
        self.chardev.update_interest(ops);
    }
}

//! The event-loop side of virtio-console: queue notifications, the backend's events (input,
//! writable again, socket clients), and terminal resizes.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::debug;

use super::resize;
use super::{Console, RX_QUEUE};

impl MutEventSubscriber for Console {
    fn init(&mut self, ops: &mut EventOps) {
        let resize = self.resize_evt.as_ref().map(|e| e.as_raw_fd());
        self.core.watch(ops, resize);
        self.chardev.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        match self.core.queue_event(fd) {
            // New receive buffers: deliver what is pending, then input may flow again.
            Some(RX_QUEUE) => self.process_rx(),
            Some(_) => self.process_tx(),
            None => self.on_other_event(&events),
        }
        self.update_input_pause();
        self.chardev.update_interest(ops);
    }
}

impl Console {
    /// A terminal resize or the backend's events.
    fn on_other_event(&mut self, events: &Events) {
        let fd = events.fd();
        if self.resize_evt.as_ref().map(|e| e.as_raw_fd()) == Some(fd) {
            if let Some(evt) = &self.resize_evt {
                // Non-blocking eventfd: an error only means no resize was pending.
                let _ = evt.read();
            }
            if let Some((cols, rows)) = resize::stdio_terminal_size() {
                self.set_size(cols, rows);
            }
        } else if self.chardev.owns(fd) {
            let ready = self.chardev.handle_event(events);
            if ready.writable {
                self.process_tx();
            }
            if ready.input {
                self.on_input();
            }
        } else {
            debug!("virtio-console: unexpected event on fd {fd}");
        }
    }
}

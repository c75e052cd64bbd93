//! The event-loop side of virtio-blk: queue notifications (ioeventfd or MMIO write), the
//! rate limiter's timer and the io_uring completion `EventFd`.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::debug;

use super::Block;
use crate::virtio::VirtioDevice;

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        let timer = self.rate_limiter.as_ref().map(|l| l.timer_fd());
        let ring = self.uring.as_ref().map(|r| r.event().as_raw_fd());
        self.core().watch(ops, timer.into_iter().chain(ring));
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if let Some(limiter) = self
            .rate_limiter
            .as_mut()
            .filter(|l| l.timer_fd() == events.fd())
        {
            limiter.timer_fired();
            self.throttled = false;
            self.process_queue();
            return;
        }
        if self
            .uring
            .as_ref()
            .is_some_and(|r| r.event().as_raw_fd() == events.fd())
        {
            self.complete();
            return;
        }
        if self.core().queue_event(events.fd()).is_none() {
            debug!("virtio-blk: unexpected event on fd {}", events.fd());
            return;
        }
        // A throttled request waits for the rate limiter's timer, not for more notifications.
        if !self.throttled {
            self.process_queue();
        }
    }
}

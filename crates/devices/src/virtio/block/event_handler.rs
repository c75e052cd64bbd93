//! The event-loop side of virtio-blk: queue notifications (ioeventfd or MMIO write).

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, warn};

use super::Block;

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        for evt in &self.queue_evts {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                warn!("virtio-blk: cannot watch queue event: {e}");
            }
        }
        if let Some(limiter) = &self.rate_limiter {
            if let Err(e) = ops.add(Events::new_raw(limiter.timer_fd(), EventSet::IN)) {
                warn!("virtio-blk: cannot watch the rate-limit timer: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let [queue_evt] = &self.queue_evts;
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
        if events.fd() != queue_evt.as_raw_fd() {
            debug!("virtio-blk: unexpected event on fd {}", events.fd());
            return;
        }
        // Non-blocking eventfd: an error only means no notification was pending.
        let _ = queue_evt.read();
        // A throttled request waits for the rate limiter's timer, not for more notifications.
        if !self.throttled {
            self.process_queue();
        }
    }
}

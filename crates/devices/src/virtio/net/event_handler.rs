//! The event-loop side of virtio-net: queue notifications and the tap's readiness.
//!
//! The tap is watched for input only while the RX side wants frames ([`RxState::WantFrames`]),
//! and for output only while a TX frame waits for room. With no guest RX buffers the tap is
//! not watched at all: the frame in hand waits, and the guest's RX notification resumes reading.
//! With an RX rate limiter out of tokens the tap is not watched either; the limiter's timer
//! resumes reading. A throttled TX frame waits in the ring for the TX limiter's timer.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, warn};

use super::device::RxState;
use super::{Net, RX_QUEUE};

impl Net {
    /// Makes the event loop watch the tap for what RX and TX are waiting for, and nothing else.
    fn update_tap_watch(&mut self, ops: &mut EventOps) {
        let mut want = EventSet::empty();
        if self.is_activated() && self.rx_state == RxState::WantFrames {
            want |= EventSet::IN;
        }
        if self.is_activated() && self.tx_blocked {
            want |= EventSet::OUT;
        }
        if want == self.tap_watch {
            return;
        }
        let fd = self.tap.as_raw_fd();
        let result = if self.tap_watch.is_empty() {
            ops.add(Events::new_raw(fd, want))
        } else if want.is_empty() {
            ops.remove(Events::new_raw(fd, self.tap_watch))
        } else {
            ops.modify(Events::new_raw(fd, want))
        };
        match result {
            Ok(()) => self.tap_watch = want,
            Err(e) => warn!(
                "virtio-net '{}': cannot watch the tap: {e:?}",
                self.tap.name()
            ),
        }
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        let timers = self.rx_limiter.iter().chain(self.tx_limiter.iter());
        self.core.watch(ops, timers.map(|l| l.timer_fd()));
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        match self.core.queue_event(fd) {
            Some(RX_QUEUE) => {
                self.process_rx();
            }
            // A throttled frame waits for the TX limiter's timer, not for more notifications.
            Some(_) => {
                if !self.tx_throttled {
                    self.process_tx();
                }
            }
            None => {
                if !self.on_other_event(&events) {
                    debug!("virtio-net: unexpected event on fd {fd}");
                    return;
                }
            }
        }
        self.update_tap_watch(ops);
    }
}

impl Net {
    /// A rate limiter's timer or the tap; false if `events` is about none of them.
    fn on_other_event(&mut self, events: &Events) -> bool {
        let fd = events.fd();
        if let Some(limiter) = self.rx_limiter.as_mut().filter(|l| l.timer_fd() == fd) {
            limiter.timer_fired();
            if self.rx_state == RxState::Throttled {
                self.process_rx();
            }
        } else if let Some(limiter) = self.tx_limiter.as_mut().filter(|l| l.timer_fd() == fd) {
            limiter.timer_fired();
            if self.tx_throttled {
                self.tx_throttled = false;
                self.process_tx();
            }
        } else if fd == self.tap.as_raw_fd() {
            let set = events.event_set();
            if set.intersects(EventSet::OUT | EventSet::ERROR | EventSet::HANG_UP)
                && self.tx_blocked
            {
                self.process_tx();
            }
            if set.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP) {
                self.process_rx();
            }
        } else {
            return false;
        }
        true
    }
}

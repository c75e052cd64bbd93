//! What every virtio device has, written once: its identity and feature set, its queues' sizes
//! and `EventFd`s, what the driver gave it at activation (memory, interrupt, queues, accepted
//! features), the fail-once path with its [`FailureLog`], and the loop that drains a queue.
//!
//! A device holds a [`VirtioCore`] and implements [`VirtioDevice`]'s few device-specific
//! methods (config space, activation and reset hooks); the trait's other methods come from the
//! core. Its queue handlers either hand each chain to [`VirtioCore::drain`] or use the core's
//! smaller steps ([`VirtioCore::pop`], [`VirtioCore::add_used`], [`VirtioCore::notify_used`]).
//!
//! [`VirtioDevice`]: super::VirtioDevice

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use log::{debug, warn};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::{FailureLog, Interrupt, VIRTIO_MMIO_INT_VRING};
use crate::{Error, GuestMemoryMmap};

/// A chain popped from a queue, borrowing the guest memory.
pub type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// What the device holds between DRIVER_OK and reset.
pub struct Active {
    /// The guest memory the queues live in.
    pub mem: GuestMemoryMmap,
    /// The interrupt shared with the transport.
    pub interrupt: Arc<Interrupt>,
    /// One queue per [`VirtioCore::queue_max_sizes`] entry, as the driver configured them.
    pub queues: Vec<Queue>,
    /// The features the driver accepted.
    pub acked_features: u64,
}

/// What a device's handler made of one chain given to it by [`VirtioCore::drain`].
pub enum Step {
    /// Served: return the chain to the driver with this many bytes written into it.
    Used(u32),
    /// Not served now (throttled, the backend is full, nothing to put in it): the chain goes
    /// back to the available ring, untouched, and the drain stops. Whatever stopped it brings
    /// the device back (a timer, the backend's readiness, a notification).
    Unpop,
    /// Taken and still being served (an asynchronous backend): the device returns it later with
    /// [`VirtioCore::add_used`] and interrupts with [`VirtioCore::notify_used`].
    Held,
}

/// How a [`VirtioCore::drain`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Nothing to do: not running, or every available chain was served.
    Empty,
    /// The handler un-popped a chain, or the budget ran out (the queue's `EventFd` was
    /// signalled so the event loop comes back after serving the others).
    Stopped,
    /// The driver broke the queue protocol: the device failed.
    Failed,
}

/// The state every virtio device shares; see the module documentation.
pub struct VirtioCore {
    name: String,
    device_type: u32,
    avail_features: u64,
    queue_max_sizes: Vec<u16>,
    /// The device-specific configuration space.
    config_space: Vec<u8>,
    /// One `EventFd` per queue, from birth to drop, signalled when the driver notifies it.
    pub(crate) queue_evts: Vec<EventFd>,
    /// Between DRIVER_OK and reset.
    pub(crate) active: Option<Active>,
    /// The driver broke the queue protocol: no more processing until reset.
    pub(crate) failed: bool,
    /// Every failure since creation (log once, count the rest).
    pub(crate) failures: FailureLog,
}

impl VirtioCore {
    /// A device called `name` in logs (e.g. `virtio-net 'tap0'`), of virtio type
    /// `device_type`, offering `avail_features`, with one queue per entry of `queue_max_sizes`
    /// and the configuration space `config_space`.
    pub fn new(
        name: impl Into<String>,
        device_type: u32,
        avail_features: u64,
        queue_max_sizes: &[u16],
        config_space: Vec<u8>,
    ) -> Result<Self, Error> {
        let queue_evts = queue_max_sizes
            .iter()
            .map(|_| {
                EventFd::new(libc::EFD_NONBLOCK).map_err(|error| Error::EventFd {
                    what: "virtio queue",
                    error,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VirtioCore {
            name: name.into(),
            device_type,
            avail_features,
            queue_max_sizes: queue_max_sizes.to_vec(),
            config_space,
            queue_evts,
            active: None,
            failed: false,
            failures: FailureLog::default(),
        })
    }

    /// The device's name in logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The virtio device type.
    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// The feature bits the device offers.
    pub fn avail_features(&self) -> u64 {
        self.avail_features
    }

    /// The maximum size of each queue.
    pub fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    /// One `EventFd` per queue.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device-specific configuration space.
    pub fn config_space(&self) -> &[u8] {
        &self.config_space
    }

    /// The device-specific configuration space, for the device to update.
    pub fn config_space_mut(&mut self) -> &mut [u8] {
        &mut self.config_space
    }

    /// Whether the driver has started the device.
    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// Whether the driver accepted feature `bit` (false before activation).
    pub fn acked(&self, bit: u32) -> bool {
        self.active
            .as_ref()
            .is_some_and(|a| a.acked_features & (1u64 << bit) != 0)
    }

    /// Whether the device runs: activated and not failed.
    pub fn is_running(&self) -> bool {
        self.active.is_some() && !self.failed
    }

    /// Stores what the driver gave at DRIVER_OK and has the event loop look at every queue once
    /// (buffers posted before DRIVER_OK may have had their notification dropped; the work is
    /// done there, not on this vCPU thread).
    pub fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
        acked_features: u64,
    ) -> Result<(), Error> {
        if queues.len() != self.queue_max_sizes.len() {
            return Err(Error::Activate(format!(
                "{} needs {} queues, was given {}",
                self.name,
                self.queue_max_sizes.len(),
                queues.len()
            )));
        }
        self.failed = false;
        self.active = Some(Active {
            mem,
            interrupt,
            queues,
            acked_features,
        });
        for q in 0..self.queue_evts.len() {
            self.kick(q);
        }
        Ok(())
    }

    /// Back to the state before activation; the `EventFd`s and the failure count stay.
    pub fn reset(&mut self) {
        self.active = None;
        self.failed = false;
    }

    /// Signals queue `q`'s `EventFd`, so the event loop serves it.
    pub fn kick(&self, q: usize) {
        if let Some(evt) = self.queue_evts.get(q) {
            if let Err(e) = evt.write(1) {
                warn!("{}: cannot kick queue {q}: {e}", self.name);
            }
        }
    }

    /// The driver broke the queue protocol: log once, ask for a reset, stop processing.
    pub fn fail(&mut self, why: &str) {
        if !self.failed {
            self.failures.record(&self.name, why);
            self.failed = true;
            if let Some(active) = &self.active {
                active.interrupt.set_needs_reset();
            }
        }
    }

    /// Raises an interrupt with `bits` if the device is activated.
    pub fn trigger(&self, bits: u32) {
        if let Some(active) = &self.active {
            active.interrupt.trigger(bits);
        }
    }

    /// Queue `q` with the guest memory, if the device runs and the driver made it ready.
    pub fn queue(&mut self, q: usize) -> Option<(&GuestMemoryMmap, &mut Queue)> {
        if self.failed {
            return None;
        }
        let active = self.active.as_mut()?;
        let queue = active.queues.get_mut(q).filter(|q| q.ready())?;
        Some((&active.mem, queue))
    }

    /// Interrupts the driver for queue `q`'s used ring, unless EVENT_IDX says it does not want
    /// to know yet.
    pub fn notify_used(&mut self, q: usize) {
        let Some(active) = &mut self.active else {
            return;
        };
        let Some(queue) = active.queues.get_mut(q) else {
            return;
        };
        match queue.needs_notification(&active.mem) {
            Ok(false) => {}
            Ok(true) | Err(_) => active.interrupt.trigger(VIRTIO_MMIO_INT_VRING),
        }
    }

    /// Pops the next chain of queue `q` and hands it to `take`; `None` if the device does not
    /// run, the queue is empty, or the ring is broken (then the device fails).
    pub fn pop<T>(&mut self, q: usize, take: impl FnOnce(Chain<'_>) -> T) -> Option<T> {
        let indirect_ok = self.acked(VIRTIO_RING_F_INDIRECT_DESC);
        let (mem, queue) = self.queue(q)?;
        let (table, size) = (queue.desc_table(), queue.size());
        let failure = match queue.iter(mem) {
            Ok(mut iter) => match iter.next() {
                Some(chain) => match unnegotiated_indirect(mem, table, size, &chain, indirect_ok) {
                    None => return Some(take(chain)),
                    Some(why) => {
                        // Not served: the driver must reset the device anyway.
                        format!("queue {q}: {why}")
                    }
                },
                None => return None,
            },
            Err(e) => format!("queue {q}: bad available ring: {e}"),
        };
        self.fail(&failure);
        None
    }

    /// Returns chain `head` of queue `q` with `len` bytes written; false (and the device
    /// fails) if it cannot be.
    pub fn add_used(&mut self, q: usize, head: u16, len: u32) -> bool {
        let Some((mem, queue)) = self.queue(q) else {
            return false;
        };
        let failure = match queue.add_used(mem, head, len) {
            Ok(()) => return true,
            Err(e) => format!("queue {q}: cannot return chain {head}: {e}"),
        };
        self.fail(&failure);
        false
    }

    /// Serves queue `q`: pops each available chain and hands it to `serve`, returns it as
    /// `serve` says, at most `budget` chains; with EVENT_IDX, re-enables notifications when the
    /// ring looks empty and looks again (the driver may have added a chain meanwhile). Then
    /// interrupts the driver if anything was used and it wants to know. A chain whose head is
    /// beyond the queue could never be returned: it is not served and the device fails.
    pub fn drain<F>(&mut self, q: usize, mut budget: usize, mut serve: F) -> Drained
    where
        F: FnMut(&GuestMemoryMmap, Chain<'_>) -> Step,
    {
        let indirect_ok = self.acked(VIRTIO_RING_F_INDIRECT_DESC);
        let Some((mem, queue)) = self.queue(q) else {
            return Drained::Empty;
        };
        let event_idx = queue.event_idx_enabled();
        let mut used_any = false;
        let mut failure = None;
        let mut outcome = Drained::Empty;
        'outer: loop {
            if event_idx {
                if let Err(e) = queue.disable_notification(mem) {
                    failure = Some(format!("queue {q}: cannot update avail_event: {e}"));
                    break;
                }
            }
            loop {
                if budget == 0 {
                    // Come back after the others had their turn.
                    outcome = Drained::Stopped;
                    break 'outer;
                }
                let chain = match queue.iter(mem) {
                    Ok(mut iter) => iter.next(),
                    Err(e) => {
                        failure = Some(format!("queue {q}: bad available ring: {e}"));
                        break 'outer;
                    }
                };
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                if head >= queue.size() {
                    failure = Some(format!(
                        "queue {q}: available ring names descriptor {head}, beyond the queue size {}",
                        queue.size()
                    ));
                    break 'outer;
                }
                let (table, size) = (queue.desc_table(), queue.size());
                if let Some(why) = unnegotiated_indirect(mem, table, size, &chain, indirect_ok) {
                    failure = Some(format!("queue {q}: {why}"));
                    break 'outer;
                }
                match serve(mem, chain) {
                    Step::Used(len) => {
                        if let Err(e) = queue.add_used(mem, head, len) {
                            failure = Some(format!("queue {q}: cannot return chain {head}: {e}"));
                            break 'outer;
                        }
                        used_any = true;
                        budget -= 1;
                    }
                    Step::Held => budget -= 1,
                    Step::Unpop => {
                        queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                        outcome = Drained::Stopped;
                        break 'outer;
                    }
                }
            }
            if !event_idx {
                break;
            }
            match queue.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    failure = Some(format!("queue {q}: cannot update avail_event: {e}"));
                    break;
                }
            }
        }
        if budget == 0 && outcome == Drained::Stopped {
            self.kick(q);
        }
        if used_any {
            self.notify_used(q);
        }
        match failure {
            Some(why) => {
                self.fail(&why);
                Drained::Failed
            }
            None => outcome,
        }
    }

    /// Watches every queue's `EventFd` on the event loop, and `extra` file descriptors.
    pub fn watch(&self, ops: &mut EventOps, extra: impl IntoIterator<Item = RawFd>) {
        let queue_fds = self.queue_evts.iter().map(|e| e.as_raw_fd());
        for fd in queue_fds.chain(extra) {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                warn!("{}: cannot watch fd {fd}: {e}", self.name);
            }
        }
    }

    /// If `fd` is a queue's `EventFd`: consumes its notification and returns the queue index.
    pub fn queue_event(&self, fd: RawFd) -> Option<usize> {
        let q = self.queue_evts.iter().position(|e| e.as_raw_fd() == fd)?;
        // Non-blocking eventfd: an error only means no notification was pending.
        let _ = self.queue_evts[q].read();
        Some(q)
    }

    /// Logs a config-space write the device ignores.
    pub fn ignore_config_write(&self, offset: u64, len: usize) {
        debug!(
            "{}: ignored {len}-byte config write at {offset:#x}",
            self.name
        );
    }
}

/// Why `chain` may not be served: it has a descriptor with VRING_DESC_F_INDIRECT while the
/// driver did not negotiate VIRTIO_RING_F_INDIRECT_DESC (no device here offers it). virtio-queue
/// would follow such a descriptor into a table of up to 65 535 entries, anywhere in guest memory,
/// and a chain could then be far longer than the queue the per-event budgets are counted in.
///
/// The walk reads the descriptor table as the driver left it, along `next`, at most `size`
/// descriptors (the longest chain virtio-queue follows without an indirect table); `None` when
/// indirect descriptors were negotiated or the chain has none. A driver that rewrites a
/// descriptor between this walk and the device's own could still slip one table past it: the
/// chain is then bounded by virtio-queue alone (one table, no nesting, every buffer checked
/// against guest memory).
pub(crate) fn unnegotiated_indirect(
    mem: &GuestMemoryMmap,
    desc_table: u64,
    size: u16,
    chain: &Chain<'_>,
    indirect_ok: bool,
) -> Option<String> {
    if indirect_ok {
        return None;
    }
    let mut index = chain.head_index();
    for _ in 0..size {
        if index >= size {
            return None;
        }
        let addr = GuestAddress(desc_table).checked_add(u64::from(index) * 16)?;
        // An unreadable descriptor ends virtio-queue's walk too.
        let desc: Descriptor = mem.read_obj(addr).ok()?;
        if desc.refers_to_indirect_table() {
            return Some(format!(
                "chain {} has an indirect descriptor ({index}), and VIRTIO_RING_F_INDIRECT_DESC \
                 was not negotiated",
                chain.head_index()
            ));
        }
        if !desc.has_next() {
            return None;
        }
        index = desc.next();
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::persist::test_util::{Driver, DATA};
    use crate::virtio::{VirtioDevice, VIRTIO_F_VERSION_1};

    struct Plain(VirtioCore);

    impl VirtioDevice for Plain {
        crate::virtio::core_accessors!(0);
    }

    fn driven() -> (Driver, Arc<Mutex<Plain>>) {
        let core = VirtioCore::new("plain", 42, 1 << VIRTIO_F_VERSION_1, &[16], vec![7]).unwrap();
        let dev = Arc::new(Mutex::new(Plain(core)));
        let driver = Driver::new(dev.clone(), 1 << VIRTIO_F_VERSION_1);
        // Activation kicked the queue once; start from a quiet EventFd.
        let _ = dev.lock().unwrap().0.queue_evts[0].read();
        (driver, dev)
    }

    #[test]
    fn drain_serves_every_chain_and_interrupts_once() {
        let (mut driver, dev) = driven();
        for _ in 0..3 {
            driver.post(0, &[(DATA, 4, true)]);
        }
        let irq = driver.transport.irq_event().try_clone().unwrap();
        let mut served = 0;
        let end = dev.lock().unwrap().0.drain(0, usize::MAX, |_, _| {
            served += 1;
            Step::Used(4)
        });
        assert_eq!((end, served), (Drained::Empty, 3));
        assert_eq!(driver.used_idx(0), 3);
        assert_eq!(driver.used(0, 2), (2, 4));
        assert_eq!(irq.read().unwrap(), 1);
    }

    #[test]
    fn an_unpopped_chain_is_served_next_time() {
        let (mut driver, dev) = driven();
        driver.post(0, &[(DATA, 4, true)]);
        driver.post(0, &[(DATA, 4, true)]);
        let mut d = dev.lock().unwrap();
        let mut calls = 0;
        let end = d.0.drain(0, usize::MAX, |_, _| {
            calls += 1;
            if calls == 2 {
                Step::Unpop
            } else {
                Step::Used(0)
            }
        });
        assert_eq!(end, Drained::Stopped);
        assert_eq!(driver.used_idx(0), 1);
        let head = d.0.pop(0, |c| c.head_index());
        assert_eq!(head, Some(1));
    }

    #[test]
    fn a_spent_budget_stops_and_kicks_the_queue() {
        let (mut driver, dev) = driven();
        for _ in 0..3 {
            driver.post(0, &[(DATA, 4, true)]);
        }
        let mut d = dev.lock().unwrap();
        assert_eq!(d.0.drain(0, 2, |_, _| Step::Used(0)), Drained::Stopped);
        assert_eq!(driver.used_idx(0), 2);
        assert_eq!(d.0.queue_evts[0].read().unwrap(), 1);
        assert_eq!(d.0.drain(0, 2, |_, _| Step::Used(0)), Drained::Empty);
        assert_eq!(driver.used_idx(0), 3);
    }

    #[test]
    fn a_head_beyond_the_queue_fails_the_device_once() {
        let (mut driver, dev) = driven();
        driver.post(0, &[(DATA, 4, true)]);
        // Rewrite the available ring's entry to name descriptor 40 of a 16-entry queue.
        driver
            .mem
            .write_obj(40u16, GuestAddress(0x2000 + 4))
            .unwrap();
        let mut d = dev.lock().unwrap();
        let end =
            d.0.drain(0, usize::MAX, |_, _| panic!("a bad chain was served"));
        assert_eq!(end, Drained::Failed);
        assert!(driver.transport.interrupt().needs_reset());
        assert_eq!(d.0.failures.count(), 1);
        // A failed device serves nothing until reset, and does not fail twice.
        driver.post(0, &[(DATA, 4, true)]);
        assert_eq!(
            d.0.drain(0, usize::MAX, |_, _| Step::Used(0)),
            Drained::Empty
        );
        d.0.fail("again");
        assert_eq!(d.0.failures.count(), 1);
        d.0.reset();
        assert!(!d.0.is_activated());
    }

    /// Posts a chain of two buffers on queue 0 and turns its second descriptor into an
    /// indirect one, naming a table of one device-writable buffer.
    fn post_indirect(driver: &mut Driver) {
        driver.post(0, &[(DATA, 4, true), (DATA + 16, 4, true)]);
        let second = 0x1000 + 16;
        let table = DATA + 0x100;
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&(DATA + 32).to_le_bytes());
        d[8..12].copy_from_slice(&4u32.to_le_bytes());
        d[12..14].copy_from_slice(&2u16.to_le_bytes());
        driver.mem.write_slice(&d, GuestAddress(table)).unwrap();
        driver.mem.write_obj(table, GuestAddress(second)).unwrap();
        driver
            .mem
            .write_obj(16u32, GuestAddress(second + 8))
            .unwrap();
        driver
            .mem
            .write_obj(4u16, GuestAddress(second + 12))
            .unwrap();
    }

    #[test]
    fn an_indirect_descriptor_never_negotiated_fails_the_device() {
        let (mut driver, dev) = driven();
        post_indirect(&mut driver);
        let mut d = dev.lock().unwrap();
        let end =
            d.0.drain(0, usize::MAX, |_, _| panic!("an indirect chain was served"));
        assert_eq!(end, Drained::Failed);
        assert!(driver.transport.interrupt().needs_reset());
        assert_eq!(driver.used_idx(0), 0);
        assert_eq!(d.0.failures.count(), 1);

        // The device's own pop refuses it too.
        let (mut driver, dev) = driven();
        post_indirect(&mut driver);
        let mut d = dev.lock().unwrap();
        assert_eq!(
            d.0.pop(0, |_| panic!("an indirect chain was served")),
            None::<()>
        );
        assert!(driver.transport.interrupt().needs_reset());
    }

    #[test]
    fn config_space_reads_through_the_default_read_config() {
        let (_, dev) = driven();
        let mut b = [0xffu8; 2];
        dev.lock().unwrap().read_config(0, &mut b);
        assert_eq!(b, [7, 0]);
    }
}

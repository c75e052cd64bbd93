//! The I/O APIC (82093AA, version 0x11) of a split irqchip: the guest programs its redirection
//! table here, in user space, and every entry it unmasks becomes an MSI route in KVM, so the
//! interrupts themselves (irqfds) never leave the kernel.
//!
//! # Guest interface
//! * MMIO at 0xfec0_0000: IOREGSEL (offset 0x00) selects a register, IOWIN (0x10) reads or writes
//!   it, 32 bits at a time. Reads of other offsets return 0; writes to them, and writes that are
//!   not 32 bits wide, are ignored.
//! * Registers: 0x00 ID (bits 27:24, writable), 0x01 version (0x0017_0011: 24 entries, version
//!   0x11, which has no EOI register), 0x02 arbitration ID (= ID), 0x10 + 2n / 0x11 + 2n the low
//!   and high halves of redirection entry n (n < 24). Every entry starts masked.
//!
//! # Routing
//! An unmasked entry with delivery mode fixed (0), lowest priority (1) or NMI (4) is routed as the
//! MSI the entry describes: address 0xfee0_0000 | destination << 12 | destination mode << 2, data
//! vector | delivery mode << 8. A masked entry, and one asking for SMI, INIT or ExtINT (or a
//! reserved mode), has no route: interrupts on that pin are dropped, as a masked edge-triggered
//! pin drops them. Every route is edge-triggered whatever the entry's trigger mode says (the bit
//! reads back as written; remote IRR stays 0): the VMM's devices signal events, not levels, so no
//! EOI ever has to come back to user space. The table is pushed to KVM only when a route changes.
//!
//! # Pacing
//! Each push is a KVM_SET_GSI_ROUTING, which waits for an SRCU grace period, and a guest can
//! change routes tens of thousands of times a second. Pushes are paced by a bucket of
//! [`PUSH_BURST`] that refills one push per [`PUSH_INTERVAL`]: a guest that programs its
//! entries as guests do (a few changes at boot, one per interrupt set up or moved) never waits,
//! and each change is in KVM before its write returns. Beyond that, a change only marks the table
//! dirty and arms a timer; when it fires ([`IoapicTimer`], on the event loop) the table as it is
//! then is pushed once, however many writes came in between, and a change undone meanwhile (mask,
//! then unmask) is never pushed. Only such a guest sees its changes land up to one interval late:
//! an interrupt raised in between goes where the previous route said, as if the write had taken
//! that long.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, warn};
use vmm_sys_util::timerfd::TimerFd;

use crate::bus::BusDevice;
use crate::seccomp::{SyscallRule, Syscalls};

/// Number of redirection entries (pins).
pub const IOAPIC_NUM_PINS: usize = 24;
/// Length of the MMIO range the VMM reserves for it.
pub const IOAPIC_MMIO_LEN: u64 = 0x1000;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const REG_ID: u32 = 0x00;
const REG_VERSION: u32 = 0x01;
const REG_ARBITRATION: u32 = 0x02;
const REG_TABLE: u32 = 0x10;
const VERSION: u32 = 0x11;

const RTE_MASKED: u64 = 1 << 16;
/// Bits of an entry the guest can set: vector, delivery mode, destination mode, polarity, trigger
/// mode, mask and destination. Delivery status (12) and remote IRR (14) are read-only.
const RTE_WRITABLE: u64 = 0xff00_0000_0001_afff;
const ID_MASK: u32 = 0x0f00_0000;

const DELIVERY_FIXED: u64 = 0;
const DELIVERY_LOWEST: u64 = 1;
const DELIVERY_NMI: u64 = 4;

/// Pushes the I/O APIC makes at once before pacing starts.
pub const PUSH_BURST: u32 = 32;
/// Once the burst is spent, at most one push per this interval (1000 a second).
pub const PUSH_INTERVAL: Duration = Duration::from_millis(1);

/// A bucket of pushes: [`PUSH_BURST`] deep, one more per [`PUSH_INTERVAL`].
#[derive(Debug)]
struct Pacer {
    credit: u32,
    /// When the credit was last brought up to date.
    since: Instant,
}

impl Pacer {
    fn new(now: Instant) -> Self {
        Pacer {
            credit: PUSH_BURST,
            since: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.since);
        let earned = elapsed.as_nanos() / PUSH_INTERVAL.as_nanos();
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        if self.credit.saturating_add(earned) >= PUSH_BURST {
            self.credit = PUSH_BURST;
            self.since = now;
        } else {
            self.credit += earned;
            self.since += PUSH_INTERVAL * earned;
        }
    }

    /// Takes one push if there is one.
    fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.credit == 0 {
            return false;
        }
        self.credit -= 1;
        true
    }

    /// How long until the next push is earned.
    fn wait(&self, now: Instant) -> Duration {
        PUSH_INTERVAL.saturating_sub(now.saturating_duration_since(self.since))
    }
}

/// An MSI: what an interrupt on a pin becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    /// The address the message is written to (the local APICs' window plus destination bits).
    pub address: u64,
    /// The message: vector and delivery mode.
    pub data: u32,
}

/// Where the I/O APIC's routes go: in a VMM, KVM's GSI routing table (GSI n = pin n).
pub trait IrqRouter: Send {
    /// Replaces every route: `routes[n]` is where an interrupt on GSI `n` goes, or `None` to drop
    /// it.
    fn set_routes(&mut self, routes: &[Option<MsiMessage>; IOAPIC_NUM_PINS])
        -> std::io::Result<()>;
}

/// The I/O APIC. Insert on the MMIO bus with length [`IOAPIC_MMIO_LEN`] (where: the VMM's choice,
/// 0xfec0_0000 on a PC).
pub struct Ioapic {
    id: u32,
    select: u32,
    table: [u64; IOAPIC_NUM_PINS],
    /// The routes last handed to the router.
    routes: [Option<MsiMessage>; IOAPIC_NUM_PINS],
    router: Box<dyn IrqRouter>,
    /// A failing router is reported once.
    router_failed: bool,
    pacer: Pacer,
    /// The table's routes differ from the ones pushed, and the timer will push them.
    dirty: bool,
    /// Fires when the next push is earned, if the table is dirty; `None` if it could not be made
    /// (then every change is pushed at once, unpaced).
    timer: Option<TimerFd>,
}

impl Ioapic {
    /// An I/O APIC with ID 0 and every entry masked, pushing its routes to `router`.
    /// Its pacing timer goes on the event loop with [`IoapicTimer`].
    pub fn new(router: Box<dyn IrqRouter>) -> Self {
        let timer = crate::nonblocking_timer("I/O APIC route pacing")
            .map_err(|e| warn!("ioapic: {e}; route changes will not be paced"))
            .ok();
        Ioapic {
            id: 0,
            select: 0,
            table: [RTE_MASKED; IOAPIC_NUM_PINS],
            routes: [None; IOAPIC_NUM_PINS],
            router,
            router_failed: false,
            pacer: Pacer::new(Instant::now()),
            dirty: false,
            timer,
        }
    }

    /// The route of each pin, as last pushed to the router.
    pub fn routes(&self) -> &[Option<MsiMessage>; IOAPIC_NUM_PINS] {
        &self.routes
    }

    /// Whether route changes wait for the pacing timer.
    pub fn routes_pending(&self) -> bool {
        self.dirty
    }

    fn read_register(&self) -> u32 {
        match self.select {
            REG_ID | REG_ARBITRATION => self.id,
            REG_VERSION => ((IOAPIC_NUM_PINS as u32 - 1) << 16) | VERSION,
            reg => match table_slot(reg) {
                Some((pin, high)) => {
                    let entry = self.table[pin];
                    if high {
                        (entry >> 32) as u32
                    } else {
                        entry as u32
                    }
                }
                None => 0,
            },
        }
    }

    fn write_register(&mut self, value: u32, now: Instant) {
        match self.select {
            REG_ID => self.id = value & ID_MASK,
            reg => match table_slot(reg) {
                Some((pin, high)) => {
                    let old = self.table[pin];
                    let new = if high {
                        (old & 0xffff_ffff) | (u64::from(value) << 32)
                    } else {
                        (old & !0xffff_ffff) | u64::from(value)
                    };
                    self.table[pin] = (old & !RTE_WRITABLE) | (new & RTE_WRITABLE);
                    self.update_routes(now);
                }
                None => debug!(
                    "ioapic: ignored a write to read-only or unknown register {:#x}",
                    self.select
                ),
            },
        }
    }

    /// Pushes the table's routes if they changed and the pacer allows; else leaves them dirty
    /// for the timer.
    fn update_routes(&mut self, now: Instant) {
        let routes = self.table.map(route);
        if routes == self.routes {
            // Nothing to push, or a deferred change undone: the timer finds nothing to do.
            self.dirty = false;
            return;
        }
        let Some(timer) = &mut self.timer else {
            self.push(routes);
            return;
        };
        if self.pacer.take(now) {
            self.dirty = false;
            self.push(routes);
            return;
        }
        if !self.dirty {
            self.dirty = true;
            let wait = self.pacer.wait(now).max(Duration::from_micros(1));
            if let Err(e) = timer.reset(wait, None) {
                warn!("ioapic: cannot arm the pacing timer: {e}; pushing at once");
                self.timer = None;
                self.dirty = false;
                self.push(routes);
            }
        }
    }

    /// The pacing timer fired (on the event loop): push the table if it is still dirty, or wait
    /// for the next push if a vCPU took this one.
    fn timer_fired(&mut self, now: Instant) {
        if let Some(timer) = &mut self.timer {
            // Non-blocking: EAGAIN if a vCPU re-armed it since it fired.
            let _ = timer.wait();
        }
        if self.dirty {
            self.dirty = false;
            self.update_routes(now);
        }
    }

    fn push(&mut self, routes: [Option<MsiMessage>; IOAPIC_NUM_PINS]) {
        match self.router.set_routes(&routes) {
            Ok(()) => self.routes = routes,
            Err(e) if !self.router_failed => {
                self.router_failed = true;
                warn!("ioapic: cannot update the interrupt routes: {e}; interrupts may be lost");
            }
            Err(_) => {}
        }
    }

    /// The 32-bit register at the 4-byte-aligned MMIO offset `reg`.
    fn mmio_register(&self, reg: u64) -> u32 {
        match reg {
            IOREGSEL => self.select,
            IOWIN => self.read_register(),
            _ => 0,
        }
    }
}

/// Pin and half (`true`: bits 63:32) of redirection-table register `reg`.
fn table_slot(reg: u32) -> Option<(usize, bool)> {
    let index = reg.checked_sub(REG_TABLE)? as usize;
    let pin = index / 2;
    (pin < IOAPIC_NUM_PINS).then_some((pin, index % 2 == 1))
}

/// Where an interrupt on a pin with redirection entry `entry` goes.
fn route(entry: u64) -> Option<MsiMessage> {
    if entry & RTE_MASKED != 0 {
        return None;
    }
    let vector = entry & 0xff;
    let delivery = (entry >> 8) & 0x7;
    let logical = (entry >> 11) & 1;
    let destination = entry >> 56;
    match delivery {
        DELIVERY_FIXED | DELIVERY_LOWEST | DELIVERY_NMI => Some(MsiMessage {
            address: 0xfee0_0000 | (destination << 12) | (logical << 2),
            data: (vector | (delivery << 8)) as u32,
        }),
        _ => None,
    }
}

impl BusDevice for Ioapic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Byte by byte, so that any width at any offset reads the registers' bytes (or zeros).
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset.saturating_add(i as u64);
            *byte = (self.mmio_register(at & !3) >> ((at & 3) * 8)) as u8;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.write_at(offset, data, Instant::now());
    }
}

impl Ioapic {
    fn write_at(&mut self, offset: u64, data: &[u8], now: Instant) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            debug!(
                "ioapic: ignored a {}-byte write at offset {offset:#x}",
                data.len()
            );
            return;
        };
        let value = u32::from_le_bytes(bytes);
        match offset {
            IOREGSEL => self.select = value & 0xff,
            IOWIN => self.write_register(value, now),
            _ => debug!("ioapic: ignored a write at offset {offset:#x}"),
        }
    }
}

/// The pacing timer on the event loop: when it fires, the routes the guest changed since the
/// last push go to the router at once.
pub struct IoapicTimer(pub Arc<Mutex<Ioapic>>);

impl MutEventSubscriber for IoapicTimer {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.event_set().contains(EventSet::IN) {
            let mut ioapic = self.0.lock().unwrap_or_else(|p| p.into_inner());
            ioapic.timer_fired(Instant::now());
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let ioapic = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(timer) = &ioapic.timer else { return };
        if let Err(e) = ops.add(Events::new_raw(timer.as_raw_fd(), EventSet::IN)) {
            warn!("ioapic: cannot watch the pacing timer: {e:?}");
        }
    }
}

/// The I/O APIC's own system calls once the guest runs. Its register handlers run on the vCPU
/// threads: a route change beyond the burst arms the pacing timer (and reads the clock). On the
/// event loop, the timer is read (and re-armed if a vCPU took the push). The [`IrqRouter`] called
/// on either thread (the `vm` crate's, which issues KVM_SET_GSI_ROUTING) declares its calls itself.
pub const SYSCALLS: Syscalls = Syscalls {
    name: "I/O APIC",
    vcpu: &[
        SyscallRule::Any(libc::SYS_timerfd_settime),
        SyscallRule::Any(libc::SYS_clock_gettime),
    ],
    event_loop: &[
        SyscallRule::Any(libc::SYS_read),
        SyscallRule::Any(libc::SYS_timerfd_settime),
        SyscallRule::Any(libc::SYS_clock_gettime),
    ],
};

pub use persist::IoapicState;

/// Saving and restoring the I/O APIC's registers; restoring re-pushes the routes.
mod persist {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::persist::{Persist, PersistError};

    /// The I/O APIC's guest-visible state: the ID, the selected register and the redirection
    /// table. The routes are not saved: they follow from the table and are pushed to the router
    /// again on restore, so KVM's routing table matches whatever it held before.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct IoapicState {
        /// The ID register (bits 27:24).
        pub id: u32,
        /// IOREGSEL: the register IOWIN reads and writes.
        pub select: u32,
        /// The redirection table, one 64-bit entry per pin.
        pub table: Vec<u64>,
    }

    impl Persist for Ioapic {
        const NAME: &'static str = "ioapic";
        const STATE_VERSION: u16 = 1;
        type State = IoapicState;

        fn save(&self) -> IoapicState {
            IoapicState {
                id: self.id,
                select: self.select,
                table: self.table.to_vec(),
            }
        }

        /// Refuses a table of another size, bits the guest cannot set, then pushes the routes
        /// and only then takes the state, so a failing router leaves the device as it was.
        fn restore(&mut self, state: IoapicState) -> Result<(), PersistError> {
            let mismatch = |why| PersistError::Mismatch {
                device: Self::NAME,
                why,
            };
            let table: [u64; IOAPIC_NUM_PINS] =
                state.table.as_slice().try_into().map_err(|_| {
                    mismatch(format!(
                        "{} redirection entries, this I/O APIC has {IOAPIC_NUM_PINS}",
                        state.table.len()
                    ))
                })?;
            if let Some((pin, entry)) = table
                .iter()
                .enumerate()
                .find(|(_, &e)| e & !RTE_WRITABLE != 0)
            {
                return Err(mismatch(format!(
                    "redirection entry {pin} is {entry:#x}, with bits {:#x} that cannot be set",
                    entry & !RTE_WRITABLE
                )));
            }
            if state.id & !ID_MASK != 0 || state.select > 0xff {
                return Err(mismatch(format!(
                    "ID {:#x} or register select {:#x} out of range",
                    state.id, state.select
                )));
            }
            let routes = table.map(route);
            self.router
                .set_routes(&routes)
                .map_err(|error| PersistError::Backend {
                    device: Self::NAME,
                    what: "set the interrupt routes",
                    error,
                })?;
            self.id = state.id;
            self.select = state.select;
            self.table = table;
            self.routes = routes;
            self.router_failed = false;
            self.dirty = false;
            Ok(())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::super::tests::{ioapic, read_reg, write_reg, Recorder};
        use super::*;
        use crate::persist::test_util::round_trip;
        use crate::persist::Versioned;

        /// An I/O APIC with ID 2, pin 4 routed to vector 0x31 on CPU 3, pin 9 programmed but
        /// masked, and IOREGSEL left on pin 9's high half.
        fn programmed() -> Ioapic {
            let (mut io, _) = ioapic();
            write_reg(&mut io, REG_ID, 0x0200_0000);
            write_reg(&mut io, REG_TABLE + 9, 0x0300_0000);
            write_reg(&mut io, REG_TABLE + 8, 0x31);
            write_reg(&mut io, REG_TABLE + 18, 0x0001_a041);
            write_reg(&mut io, REG_TABLE + 19, 0x0100_0000);
            io
        }

        #[test]
        fn round_trip_pushes_the_same_routes() {
            let io = programmed();
            let (mut fresh, pushed) = ioapic();
            let state = round_trip(&io, &mut fresh);
            assert_eq!(state.select, REG_TABLE + 19);
            assert_eq!(state.id, 0x0200_0000);
            // Restoring pushed the routes once, and they are the original's.
            let pushed = pushed.lock().unwrap();
            assert_eq!(pushed.len(), 1);
            assert_eq!(&pushed[0], io.routes());
            assert_eq!(
                pushed[0][4],
                Some(MsiMessage {
                    address: 0xfee0_3000,
                    data: 0x31
                })
            );
        }

        #[test]
        fn a_restored_ioapic_reads_and_routes_like_the_original() {
            let mut io = programmed();
            let (mut fresh, pushed) = ioapic();
            fresh.restore_versioned(io.save_versioned()).unwrap();
            // IOREGSEL was restored: IOWIN reads pin 9's high half straight away.
            let mut b = [0u8; 4];
            fresh.read(IOWIN, &mut b);
            assert_eq!(u32::from_le_bytes(b), 0x0100_0000);
            for reg in [REG_ID, REG_VERSION, REG_TABLE + 8, REG_TABLE + 18] {
                assert_eq!(
                    read_reg(&mut fresh, reg),
                    read_reg(&mut io, reg),
                    "{reg:#x}"
                );
            }
            // Unmasking pin 9 routes it the same way on both.
            write_reg(&mut io, REG_TABLE + 18, 0x0000_a041);
            write_reg(&mut fresh, REG_TABLE + 18, 0x0000_a041);
            assert_eq!(fresh.routes(), io.routes());
            assert_eq!(pushed.lock().unwrap().len(), 2);
        }

        #[test]
        fn states_that_do_not_fit_are_refused_and_change_nothing() {
            let good = programmed().save();
            let (mut fresh, pushed) = ioapic();
            let before = fresh.save();
            let mut short = good.clone();
            short.table.pop();
            let mut reserved = good.clone();
            reserved.table[3] |= 1 << 40;
            let mut id = good.clone();
            id.id = 0x1000_0000;
            let mut select = good;
            select.select = 0x100;
            for bad in [short, reserved, id, select] {
                let err = fresh
                    .restore_versioned(Versioned {
                        version: 1,
                        state: bad,
                    })
                    .unwrap_err();
                assert!(matches!(err, PersistError::Mismatch { .. }), "{err}");
            }
            assert_eq!(fresh.save(), before);
            assert!(pushed.lock().unwrap().is_empty());
        }

        #[test]
        fn a_failing_router_is_reported_and_changes_nothing() {
            let mut fresh = Ioapic::new(Box::new(Recorder {
                pushed: Default::default(),
                fail: true,
            }));
            let before = fresh.save();
            let err = fresh.restore(programmed().save()).unwrap_err();
            assert!(
                matches!(
                    err,
                    PersistError::Backend {
                        what: "set the interrupt routes",
                        ..
                    }
                ),
                "{err}"
            );
            assert_eq!(fresh.save(), before);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    pub(super) type Pushed = Arc<Mutex<Vec<[Option<MsiMessage>; IOAPIC_NUM_PINS]>>>;

    pub(super) struct Recorder {
        pub(super) pushed: Pushed,
        pub(super) fail: bool,
    }

    impl IrqRouter for Recorder {
        fn set_routes(
            &mut self,
            routes: &[Option<MsiMessage>; IOAPIC_NUM_PINS],
        ) -> std::io::Result<()> {
            if self.fail {
                return Err(std::io::Error::from_raw_os_error(libc::ENOMEM));
            }
            self.pushed.lock().unwrap().push(*routes);
            Ok(())
        }
    }

    pub(super) fn ioapic() -> (Ioapic, Pushed) {
        let pushed = Pushed::default();
        let router = Recorder {
            pushed: pushed.clone(),
            fail: false,
        };
        (Ioapic::new(Box::new(router)), pushed)
    }

    pub(super) fn write_reg(io: &mut Ioapic, reg: u32, value: u32) {
        io.write(IOREGSEL, &reg.to_le_bytes());
        io.write(IOWIN, &value.to_le_bytes());
    }

    pub(super) fn read_reg(io: &mut Ioapic, reg: u32) -> u32 {
        io.write(IOREGSEL, &reg.to_le_bytes());
        let mut b = [0u8; 4];
        io.read(IOWIN, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identification_registers() {
        let (mut io, _) = ioapic();
        assert_eq!(read_reg(&mut io, REG_VERSION), 0x0017_0011);
        assert_eq!(read_reg(&mut io, REG_ID), 0);
        write_reg(&mut io, REG_ID, 0xffff_ffff);
        assert_eq!(read_reg(&mut io, REG_ID), 0x0f00_0000);
        assert_eq!(read_reg(&mut io, REG_ARBITRATION), 0x0f00_0000);
        // The version is read-only; unknown registers read 0.
        write_reg(&mut io, REG_VERSION, 0);
        assert_eq!(read_reg(&mut io, REG_VERSION), 0x0017_0011);
        for reg in [0x03, 0x0f, 0x40, 0xff] {
            assert_eq!(read_reg(&mut io, reg), 0, "{reg:#x}");
        }
        // IOREGSEL keeps 8 bits.
        io.write(IOREGSEL, &0x1234_5601u32.to_le_bytes());
        let mut b = [0u8; 4];
        io.read(IOREGSEL, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x01);
    }

    #[test]
    fn entries_start_masked_and_route_when_unmasked() {
        let (mut io, pushed) = ioapic();
        for pin in 0..IOAPIC_NUM_PINS as u32 {
            assert_eq!(read_reg(&mut io, REG_TABLE + 2 * pin), 1 << 16);
            assert_eq!(read_reg(&mut io, REG_TABLE + 2 * pin + 1), 0);
        }
        // Pin 4: destination 3 (physical), vector 0x31, fixed, edge: high half first, as Linux does.
        write_reg(&mut io, REG_TABLE + 9, 0x0300_0000);
        assert!(pushed.lock().unwrap().is_empty(), "still masked: no push");
        write_reg(&mut io, REG_TABLE + 8, 0x31);
        let routes = *pushed.lock().unwrap().last().unwrap();
        assert_eq!(
            routes[4],
            Some(MsiMessage {
                address: 0xfee0_3000,
                data: 0x31
            })
        );
        assert!(routes
            .iter()
            .enumerate()
            .all(|(p, r)| p == 4 || r.is_none()));
        // The same value again changes nothing, so nothing is pushed.
        write_reg(&mut io, REG_TABLE + 8, 0x31);
        assert_eq!(pushed.lock().unwrap().len(), 1);
        // Logical destination, lowest priority.
        write_reg(&mut io, REG_TABLE + 8, 0x0000_0931);
        assert_eq!(
            io.routes()[4],
            Some(MsiMessage {
                address: 0xfee0_3004,
                data: 0x131
            })
        );
        // Masking removes the route.
        write_reg(&mut io, REG_TABLE + 8, 0x0001_0931);
        assert_eq!(io.routes()[4], None);
        assert_eq!(pushed.lock().unwrap().len(), 3);
    }

    #[test]
    fn read_only_bits_and_trigger_mode() {
        let (mut io, _) = ioapic();
        // Delivery status and remote IRR cannot be set; the reserved bits read 0; level trigger
        // and low polarity read back but the route stays an edge-triggered MSI.
        write_reg(&mut io, REG_TABLE + 2, 0xffff_ffff);
        assert_eq!(read_reg(&mut io, REG_TABLE + 2), 0x0001_afff);
        write_reg(&mut io, REG_TABLE + 2, 0x0000_a040);
        assert_eq!(read_reg(&mut io, REG_TABLE + 2), 0x0000_a040);
        assert_eq!(
            io.routes()[1],
            Some(MsiMessage {
                address: 0xfee0_0000,
                data: 0x40
            })
        );
        write_reg(&mut io, REG_TABLE + 3, 0xffff_ffff);
        assert_eq!(read_reg(&mut io, REG_TABLE + 3), 0xff00_0000);
        assert_eq!(io.routes()[1].unwrap().address, 0xfeef_f000);
    }

    #[test]
    fn undeliverable_modes_have_no_route() {
        let (mut io, _) = ioapic();
        for (mode, routed) in [
            (0, true),
            (1, true),
            (2, false),
            (3, false),
            (4, true),
            (5, false),
            (6, false),
            (7, false),
        ] {
            write_reg(&mut io, REG_TABLE, 0x30 | (mode << 8));
            assert_eq!(io.routes()[0].is_some(), routed, "mode {mode}");
        }
    }

    #[test]
    fn odd_widths_and_offsets_are_harmless() {
        let (mut io, pushed) = ioapic();
        write_reg(&mut io, REG_TABLE, 0x0834);
        io.write(IOREGSEL, &[REG_TABLE as u8]);
        // Narrow reads see the register's bytes; reads past the two registers see zeros.
        io.write(IOREGSEL, &REG_TABLE.to_le_bytes());
        let mut b = [0xffu8; 2];
        io.read(IOWIN + 1, &mut b);
        assert_eq!(b, [0x08, 0]);
        let mut b = [0xffu8; 8];
        io.read(IOWIN, &mut b);
        assert_eq!(b, [0x34, 0x08, 0, 0, 0, 0, 0, 0]);
        let mut b = [0xffu8; 4];
        io.read(0x40, &mut b);
        assert_eq!(b, [0; 4]);
        io.read(u64::MAX - 1, &mut b);
        assert_eq!(b, [0; 4]);
        // Writes that are not 32 bits wide, or elsewhere, change nothing.
        let before = pushed.lock().unwrap().len();
        io.write(IOWIN, &[0xff]);
        io.write(IOWIN, &[0xff; 8]);
        io.write(0x20, &0u32.to_le_bytes());
        io.write(0x40, &0u32.to_le_bytes());
        io.write(IOWIN, &[]);
        assert_eq!(read_reg(&mut io, REG_TABLE), 0x0834);
        assert_eq!(pushed.lock().unwrap().len(), before);
        // Selecting a register past the table reads 0 and ignores writes.
        write_reg(&mut io, REG_TABLE + 2 * IOAPIC_NUM_PINS as u32, 0);
        assert_eq!(read_reg(&mut io, REG_TABLE + 2 * IOAPIC_NUM_PINS as u32), 0);
    }

    /// Writes `value` to register `reg` as if at time `now`.
    fn write_reg_at(io: &mut Ioapic, reg: u32, value: u32, now: Instant) {
        io.write_at(IOREGSEL, &reg.to_le_bytes(), now);
        io.write_at(IOWIN, &value.to_le_bytes(), now);
    }

    /// A guest flipping an entry's mask and vector as fast as it can: N writes that each change a
    /// route cost the burst, then one push per interval, each with the table as it is then.
    #[test]
    fn route_changes_beyond_the_burst_are_pushed_once_per_interval() {
        const N: u32 = 10_001;
        let (mut io, pushed) = ioapic();
        let start = Instant::now();
        io.pacer = Pacer::new(start);
        for i in 0..N {
            let masked = if i % 2 == 0 { 0 } else { 1 << 16 };
            write_reg_at(&mut io, REG_TABLE + 14, (0x40 + (i & 0x3f)) | masked, start);
        }
        assert_eq!(pushed.lock().unwrap().len(), PUSH_BURST as usize);
        assert!(io.routes_pending());
        assert!(io.timer.as_ref().unwrap().is_armed().unwrap());
        // The last push (write 31) masked pin 7; the last write unmasked it, to vector 0x50.
        assert_eq!(io.routes()[7], None);
        // The timer, one interval later: one push, of the table as it is now.
        io.timer_fired(start + PUSH_INTERVAL);
        assert_eq!(pushed.lock().unwrap().len(), PUSH_BURST as usize + 1);
        assert_eq!(io.routes()[7].unwrap().data, 0x50);
        assert!(!io.routes_pending());
        // Another N writes over one second of guest time: at most one push per interval.
        for i in 0..N {
            let now = start + PUSH_INTERVAL + Duration::from_micros(u64::from(i) * 100);
            write_reg_at(&mut io, REG_TABLE + 14, 0x40 + (i & 0x3f), now);
            if i % 10 == 9 {
                io.timer_fired(now);
            }
        }
        let pushes = pushed.lock().unwrap().len() - PUSH_BURST as usize - 1;
        assert!(pushes <= 1001, "{pushes} pushes in one second");
        assert!(pushes >= 900, "{pushes} pushes in one second");
    }

    /// A change deferred and then undone (mask, unmask) is never pushed; one the timer finds
    /// still pending is, and what a vCPU pushed meanwhile is not pushed again.
    #[test]
    fn deferred_changes_coalesce() {
        let (mut io, pushed) = ioapic();
        let t = Instant::now();
        io.pacer = Pacer::new(t);
        io.pacer.credit = 1;
        write_reg_at(&mut io, REG_TABLE, 0x30, t);
        assert_eq!(pushed.lock().unwrap().len(), 1);
        // Out of credit: mask, then unmask again: the pushed routes are right, nothing to push.
        write_reg_at(&mut io, REG_TABLE, 0x0001_0030, t);
        assert!(io.routes_pending());
        write_reg_at(&mut io, REG_TABLE, 0x30, t);
        assert!(!io.routes_pending());
        io.timer_fired(t + PUSH_INTERVAL);
        assert_eq!(pushed.lock().unwrap().len(), 1);
        // Deferred, then pushed by the vCPU once a push is earned: the timer has nothing left.
        write_reg_at(&mut io, REG_TABLE + 2, 0x31, t + PUSH_INTERVAL);
        write_reg_at(&mut io, REG_TABLE + 4, 0x32, t + PUSH_INTERVAL);
        assert!(io.routes_pending());
        write_reg_at(&mut io, REG_TABLE + 6, 0x33, t + 2 * PUSH_INTERVAL);
        assert!(!io.routes_pending());
        assert_eq!(pushed.lock().unwrap().len(), 3);
        assert!(io.routes()[1..4].iter().all(Option::is_some));
        io.timer_fired(t + 2 * PUSH_INTERVAL);
        assert_eq!(pushed.lock().unwrap().len(), 3);
        // A timer that finds no push earned (the vCPU took it) waits for the next one.
        write_reg_at(&mut io, REG_TABLE + 8, 0x34, t + 2 * PUSH_INTERVAL);
        io.timer_fired(t + 2 * PUSH_INTERVAL);
        assert!(io.routes_pending());
        assert!(io.timer.as_ref().unwrap().is_armed().unwrap());
        io.timer_fired(t + 3 * PUSH_INTERVAL);
        assert!(!io.routes_pending());
        assert!(io.routes()[4].is_some());
        assert_eq!(pushed.lock().unwrap().len(), 4);
    }

    /// The timer on a real event loop pushes what the vCPUs deferred.
    #[test]
    fn the_pacing_timer_pushes_on_the_event_loop() {
        use event_manager::{EventManager, SubscriberOps};
        let (io, pushed) = ioapic();
        let io = Arc::new(Mutex::new(io));
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().unwrap();
        em.add_subscriber(Arc::new(Mutex::new(IoapicTimer(io.clone()))));
        for i in 0..PUSH_BURST + 10 {
            write_reg(&mut io.lock().unwrap(), REG_TABLE, 0x40 + (i & 0xf));
        }
        assert!(io.lock().unwrap().routes_pending());
        for _ in 0..100 {
            em.run_with_timeout(100).unwrap();
            if !io.lock().unwrap().routes_pending() {
                break;
            }
        }
        let io = io.lock().unwrap();
        assert!(!io.routes_pending());
        assert_eq!(
            io.routes()[0].unwrap().data,
            0x40 + ((PUSH_BURST + 9) & 0xf)
        );
        assert_eq!(pushed.lock().unwrap().len(), PUSH_BURST as usize + 1);
    }

    #[test]
    fn a_failing_router_keeps_the_table_and_retries() {
        let pushed = Pushed::default();
        let mut io = Ioapic::new(Box::new(Recorder {
            pushed: pushed.clone(),
            fail: true,
        }));
        write_reg(&mut io, REG_TABLE, 0x30);
        write_reg(&mut io, REG_TABLE + 2, 0x31);
        assert_eq!(read_reg(&mut io, REG_TABLE), 0x30);
        assert!(io.routes().iter().all(Option::is_none));
        assert!(io.router_failed);
    }
}

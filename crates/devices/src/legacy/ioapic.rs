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

use log::{debug, warn};

use crate::bus::BusDevice;
use crate::seccomp::Syscalls;

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
}

impl Ioapic {
    /// An I/O APIC with ID 0 and every entry masked, pushing its routes to `router`.
    pub fn new(router: Box<dyn IrqRouter>) -> Self {
        Ioapic {
            id: 0,
            select: 0,
            table: [RTE_MASKED; IOAPIC_NUM_PINS],
            routes: [None; IOAPIC_NUM_PINS],
            router,
            router_failed: false,
        }
    }

    /// The current route of each pin.
    pub fn routes(&self) -> &[Option<MsiMessage>; IOAPIC_NUM_PINS] {
        &self.routes
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

    fn write_register(&mut self, value: u32) {
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
                    self.update_routes();
                }
                None => debug!(
                    "ioapic: ignored a write to read-only or unknown register {:#x}",
                    self.select
                ),
            },
        }
    }

    fn update_routes(&mut self) {
        let routes = self.table.map(route);
        if routes == self.routes {
            return;
        }
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
            IOWIN => self.write_register(value),
            _ => debug!("ioapic: ignored a write at offset {offset:#x}"),
        }
    }
}

/// The I/O APIC's own system calls once the guest runs: none. Its register handlers run on the vCPU
/// threads, and so does the [`IrqRouter`] a redirection-table write calls: the router's
/// implementation (the `vm` crate's, which issues KVM_SET_GSI_ROUTING) declares its calls itself.
pub const SYSCALLS: Syscalls = Syscalls {
    name: "I/O APIC",
    vcpu: &[],
    event_loop: &[],
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

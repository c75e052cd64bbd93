//! The registers of a hardware-reduced ACPI machine: the sleep control and status registers (how
//! a guest powers off), the reset register, and the event selector of the Generic Event Device
//! (how the host presses the power button).
//!
//! # Guest interface
//! Four byte-wide ports from the base the VMM places it at (the ACPI tables name them):
//! * offset 0, **sleep control**: writing `SLP_TYP << 2 | SLP_EN` with SLP_TYP = [`S5_SLEEP_TYPE`]
//!   (what `\_S5` says) powers the machine off; other sleep types are ignored (there is no
//!   suspend).
//! * offset 1, **sleep status**: reads 0 (the machine never wakes from a sleep state).
//! * offset 2, **reset**: writing [`RESET_VALUE`] resets the machine; other values are ignored.
//! * offset 3, **GED event selector**: a read returns the events pending since the last read
//!   ([`GED_EVENT_POWER_BUTTON`]) and clears them. The VMM raises the GED's interrupt after
//!   setting an event.
//!
//! Other offsets and widths read 0 and ignore writes. Power-off and reset go to the VMM through
//! the callback given at creation, on the vCPU thread that wrote the register.

use std::io;

use log::debug;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::seccomp::{SyscallRule, Syscalls};

/// How many ports the device takes.
pub const ACPI_PM_PORT_LEN: u64 = 4;
/// Offset of the sleep control register.
pub const SLEEP_CONTROL: u64 = 0;
/// Offset of the sleep status register.
pub const SLEEP_STATUS: u64 = 1;
/// Offset of the reset register.
pub const RESET: u64 = 2;
/// Offset of the GED event selector.
pub const GED_SELECTOR: u64 = 3;
/// The value that resets the machine when written to [`RESET`].
pub const RESET_VALUE: u8 = 1;
/// The sleep type of soft-off (S5).
pub const S5_SLEEP_TYPE: u8 = 5;
/// SLP_EN, the sleep control register's "go" bit.
pub const SLEEP_ENABLE: u8 = 1 << 5;
/// The event selector's bit for a power-button press.
pub const GED_EVENT_POWER_BUTTON: u8 = 1;

/// What the guest asked of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerRequest {
    /// Sleep state S5: power off.
    PowerOff,
    /// The reset register.
    Reset,
}

/// Where the device sends the guest's power-off and reset requests.
pub type PowerSink = Box<dyn Fn(PowerRequest) + Send>;

/// The ACPI platform registers; see the module documentation.
pub struct AcpiPm {
    /// The GED's interrupt (an irqfd).
    ged_irq: EventFd,
    /// Events set and not yet read by the guest.
    pending: u8,
    sink: PowerSink,
}

impl AcpiPm {
    /// The registers, raising `ged_irq` on an event and handing power-off and reset to `sink`.
    pub fn new(ged_irq: EventFd, sink: PowerSink) -> Self {
        AcpiPm {
            ged_irq,
            pending: 0,
            sink,
        }
    }

    /// Presses the power button: sets its event and raises the GED's interrupt. The guest's
    /// ACPI code reads the selector and notifies its power-button driver.
    pub fn press_power_button(&mut self) -> io::Result<()> {
        self.pending |= GED_EVENT_POWER_BUTTON;
        self.ged_irq.write(1)
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len();
        match (offset, data) {
            (GED_SELECTOR, [byte]) => *byte = std::mem::take(&mut self.pending),
            (SLEEP_CONTROL | SLEEP_STATUS | RESET, [_]) => {}
            _ => debug!("acpi: ignored {len}-byte read at offset {offset}"),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let value = match data {
            [value] => *value,
            _ => {
                debug!("acpi: ignored {}-byte write at offset {offset}", data.len());
                return;
            }
        };
        match offset {
            SLEEP_CONTROL if value & SLEEP_ENABLE != 0 => {
                let sleep_type = (value >> 2) & 0x7;
                if sleep_type == S5_SLEEP_TYPE {
                    (self.sink)(PowerRequest::PowerOff);
                } else {
                    debug!("acpi: ignored sleep type {sleep_type} (only S5 exists)");
                }
            }
            RESET if value == RESET_VALUE => (self.sink)(PowerRequest::Reset),
            _ => debug!("acpi: ignored write of {value:#x} at offset {offset}"),
        }
    }
}

/// The registers' system calls once the guest runs: power-off and reset write the VMM's exit
/// eventfd (on a vCPU thread); a power-button press writes the GED's irqfd (on the event loop).
pub const SYSCALLS: Syscalls = Syscalls {
    name: "ACPI platform registers",
    vcpu: &[SyscallRule::Any(libc::SYS_write)],
    event_loop: &[SyscallRule::Any(libc::SYS_write)],
};

pub use persist::AcpiPmState;

/// Saving and restoring the pending events.
mod persist {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::persist::{Persist, PersistError};

    /// The registers' state: the events the guest has not read yet (a power-button press in
    /// flight survives a snapshot; the restored VM raises no new interrupt for it, the guest
    /// reads it on its pending one).
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct AcpiPmState {
        /// Pending event bits.
        pub pending: u8,
    }

    impl Persist for AcpiPm {
        const NAME: &'static str = "acpi-pm";
        const STATE_VERSION: u16 = 1;
        type State = AcpiPmState;

        fn save(&self) -> AcpiPmState {
            AcpiPmState {
                pending: self.pending,
            }
        }

        fn restore(&mut self, state: AcpiPmState) -> Result<(), PersistError> {
            if state.pending & !GED_EVENT_POWER_BUTTON != 0 {
                return Err(PersistError::Mismatch {
                    device: Self::NAME,
                    why: format!("pending events {:#x}: only bit 0 exists", state.pending),
                });
            }
            self.pending = state.pending;
            Ok(())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::super::tests::device;
        use super::*;
        use crate::persist::test_util::round_trip;

        #[test]
        fn a_pending_press_survives() {
            let (mut dev, _, _) = device();
            dev.press_power_button().unwrap();
            let (mut fresh, _, _) = device();
            assert_eq!(round_trip(&dev, &mut fresh).pending, 1);
            let mut byte = [0];
            fresh.read(GED_SELECTOR, &mut byte);
            assert_eq!(byte, [GED_EVENT_POWER_BUTTON]);
        }

        #[test]
        fn unknown_events_are_refused() {
            let (mut dev, _, _) = device();
            let result = dev.restore(AcpiPmState { pending: 0x80 });
            assert!(matches!(result, Err(PersistError::Mismatch { .. })));
            assert_eq!(dev.save().pending, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    pub(super) fn device() -> (AcpiPm, EventFd, Arc<Mutex<Vec<PowerRequest>>>) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let dev = AcpiPm::new(
            irq.try_clone().unwrap(),
            Box::new(move |r| sink.lock().unwrap().push(r)),
        );
        (dev, irq, seen)
    }

    #[test]
    fn s5_powers_off_and_the_reset_value_resets() {
        let (mut dev, _, seen) = device();
        dev.write(SLEEP_CONTROL, &[S5_SLEEP_TYPE << 2 | SLEEP_ENABLE]);
        dev.write(RESET, &[RESET_VALUE]);
        assert_eq!(
            *seen.lock().unwrap(),
            [PowerRequest::PowerOff, PowerRequest::Reset]
        );
    }

    #[test]
    fn everything_else_is_ignored() {
        let (mut dev, irq, seen) = device();
        // S5 without SLP_EN, other sleep types, other reset values, wide writes, other offsets.
        dev.write(SLEEP_CONTROL, &[S5_SLEEP_TYPE << 2]);
        for sleep_type in (0..8).filter(|&t| t != S5_SLEEP_TYPE) {
            dev.write(SLEEP_CONTROL, &[sleep_type << 2 | SLEEP_ENABLE]);
        }
        for value in (0..=255).filter(|&v| v != RESET_VALUE) {
            dev.write(RESET, &[value]);
        }
        dev.write(SLEEP_CONTROL, &[S5_SLEEP_TYPE << 2 | SLEEP_ENABLE, 0]);
        dev.write(RESET, &[]);
        dev.write(SLEEP_STATUS, &[0xff]);
        dev.write(GED_SELECTOR, &[0xff]);
        dev.write(ACPI_PM_PORT_LEN + 7, &[RESET_VALUE]);
        assert!(seen.lock().unwrap().is_empty());
        assert!(irq.read().is_err(), "no interrupt");
        let mut wide = [0xaa; 4];
        dev.read(GED_SELECTOR, &mut wide);
        assert_eq!(wide, [0; 4]);
    }

    #[test]
    fn the_power_button_raises_the_irq_and_the_selector_clears_on_read() {
        let (mut dev, irq, _) = device();
        let mut byte = [0xaa];
        dev.read(GED_SELECTOR, &mut byte);
        assert_eq!(byte, [0]);
        dev.press_power_button().unwrap();
        dev.press_power_button().unwrap();
        assert_eq!(irq.read().unwrap(), 2);
        dev.read(GED_SELECTOR, &mut byte);
        assert_eq!(byte, [GED_EVENT_POWER_BUTTON]);
        dev.read(GED_SELECTOR, &mut byte);
        assert_eq!(byte, [0]);
        dev.read(SLEEP_STATUS, &mut byte);
        assert_eq!(byte, [0]);
    }
}

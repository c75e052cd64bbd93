//! Legacy PC devices: the COM1 serial port, the i8042 controller (reset only), the boot timer, the
//! ACPI platform registers, pvpanic and the exit device, and the I/O APIC and PIT that a split irqchip leaves to
//! user space.

mod acpi_pm;
mod boot_timer;
mod exit_device;
mod i8042;
mod ioapic;
mod pit;
mod pvpanic;
mod serial;

pub use acpi_pm::{
    AcpiPm, PowerRequest, PowerSink, ACPI_PM_PORT_LEN, GED_EVENT_POWER_BUTTON, GED_SELECTOR, RESET,
    RESET_VALUE, S5_SLEEP_TYPE, SLEEP_CONTROL, SLEEP_ENABLE, SLEEP_STATUS,
};
pub use boot_timer::{BootTimer, BOOT_TIMER_MAGIC, BOOT_TIMER_MMIO_LEN, BOOT_TIMER_PORT_LEN};
pub use exit_device::{ExitDevice, ExitSink};
pub use i8042::I8042;
pub use ioapic::{
    Ioapic, IoapicTimer, IrqRouter, MsiMessage, IOAPIC_MMIO_LEN, IOAPIC_NUM_PINS, PUSH_BURST,
    PUSH_INTERVAL,
};
pub use pit::{Pit, PitPorts, PitTimer, SpeakerPort, MIN_IRQ_PERIOD, PIT_FREQ_HZ, PIT_PORT_LEN};
pub use pvpanic::{PanicSink, Pvpanic, PVPANIC_PANICKED};
pub use serial::{ChardevWriter, Serial, SerialInput};

pub use acpi_pm::SYSCALLS as ACPI_PM_SYSCALLS;
pub use boot_timer::SYSCALLS as BOOT_TIMER_SYSCALLS;
pub use exit_device::SYSCALLS as EXIT_DEVICE_SYSCALLS;
pub use i8042::SYSCALLS as I8042_SYSCALLS;
pub use ioapic::SYSCALLS as IOAPIC_SYSCALLS;
pub use pit::SYSCALLS as PIT_SYSCALLS;
pub use pvpanic::SYSCALLS as PVPANIC_SYSCALLS;
pub use serial::SYSCALLS as SERIAL_SYSCALLS;
/// What fires a device's interrupt or reset line.
pub use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// An `EventFd` as a vm-superio interrupt / reset trigger.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The saved states of the legacy devices (see [`crate::persist`]).
pub use acpi_pm::AcpiPmState;
pub use boot_timer::BootTimerState;
pub use exit_device::ExitDeviceState;
pub use i8042::I8042State;
pub use ioapic::IoapicState;
pub use pit::{PitChannelState, PitState};
pub use pvpanic::PvpanicState;
pub use serial::SerialState;

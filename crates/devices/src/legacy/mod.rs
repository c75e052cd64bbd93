//! Legacy PC devices: the COM1 serial port, the i8042 controller (reset only) and the boot timer.

mod boot_timer;
mod i8042;
mod serial;

pub use boot_timer::{
    BootTimer, BOOT_TIMER_MAGIC, BOOT_TIMER_MMIO_ADDR, BOOT_TIMER_MMIO_LEN, BOOT_TIMER_PORT,
    BOOT_TIMER_PORT_LEN,
};
pub use i8042::I8042;
pub use serial::{ChardevWriter, Serial, SerialInput};
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

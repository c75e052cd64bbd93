//! The exit device: a guest without an agent (a kernel self-test, a tiny guest, an init script)
//! ends the VM with a status of its choosing.
//!
//! # Guest interface
//! One I/O port, and the first bytes of an MMIO page for guest user space that has /dev/mem but no
//! port access (the VMM places both; `arch::layout` says where). A write of 1, 2 or 4 bytes at
//! offset 0 ends the VM with the low byte of the value as the exit status: `outb(7, port)` (or
//! busybox `devmem ADDR 8 7`) makes vmm exit 7. Unlike
//! QEMU's isa-debug-exit there is no shifted encoding: what is written is the status. Reads return
//! 0. The status goes to the VMM through the callback given at creation, on the writing vCPU's
//! thread.

use log::debug;

use crate::bus::BusDevice;
use crate::seccomp::{SyscallRule, Syscalls};

/// Where the device hands the guest's status.
pub type ExitSink = Box<dyn Fn(u8) + Send>;

/// The exit port; see the module documentation.
pub struct ExitDevice {
    sink: ExitSink,
}

impl ExitDevice {
    /// An exit port handing the guest's status to `sink`.
    pub fn new(sink: ExitSink) -> Self {
        ExitDevice { sink }
    }
}

impl BusDevice for ExitDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, [status, ..]) if matches!(data.len(), 1 | 2 | 4) => (self.sink)(*status),
            _ => debug!("exit device: ignored write of {data:x?} at offset {offset}"),
        }
    }
}

/// The exit device's system calls once the guest runs: the status goes to the VMM's exit eventfd,
/// on a vCPU thread.
pub const SYSCALLS: Syscalls = Syscalls {
    name: "exit device",
    vcpu: &[SyscallRule::Any(libc::SYS_write)],
    event_loop: &[],
};

pub use persist::ExitDeviceState;

/// Saving and restoring the exit device (it has no state).
mod persist {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::persist::{Persist, PersistError};

    /// The exit device's state: empty; the struct exists so that a later register gets a version
    /// of its own.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ExitDeviceState {}

    impl Persist for ExitDevice {
        const NAME: &'static str = "exit-device";
        const STATE_VERSION: u16 = 1;
        type State = ExitDeviceState;

        fn save(&self) -> ExitDeviceState {
            ExitDeviceState {}
        }

        fn restore(&mut self, _state: ExitDeviceState) -> Result<(), PersistError> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::persist::test_util::round_trip;

    fn device() -> (ExitDevice, Arc<Mutex<Vec<u8>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        (
            ExitDevice::new(Box::new(move |s| sink.lock().unwrap().push(s))),
            seen,
        )
    }

    #[test]
    fn the_low_byte_of_a_write_is_the_status() {
        let (mut dev, seen) = device();
        dev.write(0, &[7]);
        dev.write(0, &[0]);
        dev.write(0, &[0xff, 0x01]);
        dev.write(0, &[42, 1, 2, 3]);
        assert_eq!(*seen.lock().unwrap(), [7, 0, 0xff, 42]);
    }

    #[test]
    fn other_writes_and_reads_do_nothing() {
        let (mut dev, seen) = device();
        dev.write(1, &[7]);
        dev.write(0, &[]);
        dev.write(0, &[1, 2, 3]);
        dev.write(0, &[1; 8]);
        assert!(seen.lock().unwrap().is_empty());
        let mut bytes = [0xaa; 4];
        dev.read(0, &mut bytes);
        assert_eq!(bytes, [0; 4]);
    }

    #[test]
    fn round_trip_keeps_working() {
        let (dev, _) = device();
        let (mut fresh, seen) = device();
        assert_eq!(round_trip(&dev, &mut fresh), ExitDeviceState {});
        fresh.write(0, &[3]);
        assert_eq!(*seen.lock().unwrap(), [3]);
    }
}

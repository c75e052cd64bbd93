//! The i8042 keyboard controller, reduced to what a VMM needs: the CPU-reset command.

use log::{debug, warn};
use vm_superio::{I8042Device, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::EventFdTrigger;
use crate::bus::BusDevice;
use crate::seccomp::{SyscallRule, Syscalls};

/// Offset of the command/status port (0x64) from the data port (0x60).
const COMMAND_OFFSET: u64 = 4;

/// i8042 at ports 0x60..0x65: writing 0xFE to port 0x64 fires the reset trigger (an EventFd by default;
/// a VMM can pass its own [`Trigger`] to stop the writing vCPU at once).
///
/// Offset 0 is the data port 0x60, offset 4 the command/status port 0x64: insert it at both with
/// [`crate::bus::Bus::insert_at`] (length 1, offsets 0 and 4), leaving port 0x61 to the PIT, or at
/// 0x60 with length 5. Every read returns 0: no data pending, input buffer empty (status 0), so a
/// guest driver that polls the status never waits.
pub struct I8042<T: Trigger = EventFdTrigger> {
    inner: I8042Device<T>,
}

impl I8042<EventFdTrigger> {
    /// An i8042 that signals `reset_evt` when the guest asks for a CPU reset.
    pub fn new(reset_evt: EventFd) -> Self {
        Self::with_trigger(EventFdTrigger(reset_evt))
    }
}

impl<T: Trigger> I8042<T> {
    /// An i8042 that fires `reset` when the guest asks for a CPU reset.
    pub fn with_trigger(reset: T) -> Self {
        I8042 {
            inner: I8042Device::new(reset),
        }
    }
}

impl<T: Trigger + Send> BusDevice for I8042<T>
where
    T::E: std::fmt::Display,
{
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || (offset != 0 && offset != COMMAND_OFFSET) {
            debug!("i8042: ignored {}-byte read at offset {offset}", data.len());
            data.fill(0);
            return;
        }
        data[0] = self.inner.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || (offset != 0 && offset != COMMAND_OFFSET) {
            debug!(
                "i8042: ignored {}-byte write at offset {offset}",
                data.len()
            );
            return;
        }
        if let Err(e) = self.inner.write(offset as u8, data[0]) {
            warn!("i8042: cannot signal the reset event: {e}");
        }
    }
}

/// The i8042's system calls once the guest runs: the reset command writes the reset eventfd, on a
/// vCPU thread.
pub const SYSCALLS: Syscalls = Syscalls {
    name: "i8042",
    vcpu: &[SyscallRule::Any(libc::SYS_write)],
    event_loop: &[],
};

pub use persist::I8042State;

/// Saving and restoring the i8042 (nothing the guest can see changes).
mod persist {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::persist::{Persist, PersistError};

    /// The i8042's state: empty. The device keeps no registers (every read returns 0) and its
    /// only effect, the reset trigger, is the VMM's; the struct exists so that a later register
    /// gets a version of its own.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct I8042State {}

    impl<T: Trigger> Persist for I8042<T> {
        const NAME: &'static str = "i8042";
        const STATE_VERSION: u16 = 1;
        type State = I8042State;

        fn save(&self) -> I8042State {
            I8042State {}
        }

        fn restore(&mut self, _state: I8042State) -> Result<(), PersistError> {
            Ok(())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::bus::BusDevice;
        use crate::persist::test_util::round_trip;

        #[test]
        fn round_trip_and_reset_still_fires() {
            let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let dev = I8042::new(evt.try_clone().unwrap());
            let evt2 = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let mut fresh = I8042::new(evt2.try_clone().unwrap());
            assert_eq!(round_trip(&dev, &mut fresh), I8042State {});
            fresh.write(COMMAND_OFFSET, &[0xfe]);
            assert_eq!(evt2.read().unwrap(), 1);
            assert!(evt.read().is_err());
        }

        #[test]
        fn another_version_is_refused() {
            let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let mut dev = I8042::new(evt);
            let mut saved = dev.save_versioned();
            saved.version += 1;
            assert!(matches!(
                dev.restore_versioned(saved),
                Err(PersistError::Version {
                    device: "i8042",
                    ..
                })
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_signals_event() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(evt.try_clone().unwrap());

        // Other commands, the data port and odd sizes do nothing.
        dev.write(COMMAND_OFFSET, &[0xaa]);
        dev.write(0, &[0xfe]);
        dev.write(COMMAND_OFFSET, &[0xfe, 0]);
        dev.write(2, &[0xfe]);
        assert!(evt.read().is_err(), "no reset expected yet");

        dev.write(COMMAND_OFFSET, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn reads_are_plausible() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(evt);
        let mut b = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut b);
        assert_eq!(b, [0]);
        let mut b = [0xffu8; 2];
        dev.read(0, &mut b);
        assert_eq!(b, [0, 0]);
    }
}

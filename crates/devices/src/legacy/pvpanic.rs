//! pvpanic: the one-byte port a guest kernel writes when it panics (QEMU's device, which Linux's
//! pvpanic driver finds through ACPI as `QEMU0001`).
//!
//! # Guest interface
//! One byte-wide port. A read returns the events the device supports: [`PVPANIC_PANICKED`] only
//! (so the guest never sends "crash loaded", which would mean a kdump kernel is about to run).
//! A write with that bit set reports a panic to the VMM through the callback given at creation,
//! on the writing vCPU's thread; every other write is ignored.

use log::debug;

use crate::bus::BusDevice;
use crate::seccomp::{SyscallRule, Syscalls};

/// Bit 0: the guest kernel panicked.
pub const PVPANIC_PANICKED: u8 = 1;

/// Where the device reports a panic.
pub type PanicSink = Box<dyn Fn() + Send>;

/// The pvpanic port; see the module documentation.
pub struct Pvpanic {
    sink: PanicSink,
}

impl Pvpanic {
    /// A pvpanic port reporting to `sink`.
    pub fn new(sink: PanicSink) -> Self {
        Pvpanic { sink }
    }
}

impl BusDevice for Pvpanic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (0, [byte]) = (offset, data) {
            *byte = PVPANIC_PANICKED;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, [value]) if value & PVPANIC_PANICKED != 0 => (self.sink)(),
            _ => debug!("pvpanic: ignored write of {data:x?} at offset {offset}"),
        }
    }
}

/// pvpanic's system calls once the guest runs: a panic writes the VMM's exit eventfd, on a vCPU
/// thread.
pub const SYSCALLS: Syscalls = Syscalls {
    name: "pvpanic",
    vcpu: &[SyscallRule::Any(libc::SYS_write)],
    event_loop: &[],
};

pub use persist::PvpanicState;

/// Saving and restoring pvpanic (it has no state).
mod persist {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::persist::{Persist, PersistError};

    /// pvpanic's state: empty (the device has no registers); the struct exists so that a later
    /// register gets a version of its own.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct PvpanicState {}

    impl Persist for Pvpanic {
        const NAME: &'static str = "pvpanic";
        const STATE_VERSION: u16 = 1;
        type State = PvpanicState;

        fn save(&self) -> PvpanicState {
            PvpanicState {}
        }

        fn restore(&mut self, _state: PvpanicState) -> Result<(), PersistError> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::persist::{test_util::round_trip, Persist};

    fn device() -> (Pvpanic, Arc<AtomicUsize>) {
        let panics = Arc::new(AtomicUsize::new(0));
        let seen = panics.clone();
        let dev = Pvpanic::new(Box::new(move || {
            seen.fetch_add(1, Ordering::SeqCst);
        }));
        (dev, panics)
    }

    #[test]
    fn reads_offer_panicked_only_and_a_panic_is_reported() {
        let (mut dev, panics) = device();
        let mut byte = [0xaa];
        dev.read(0, &mut byte);
        assert_eq!(byte, [PVPANIC_PANICKED]);
        dev.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(panics.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn other_writes_are_ignored() {
        let (mut dev, panics) = device();
        dev.write(0, &[0]);
        dev.write(0, &[2]); // "crash loaded": not offered
        dev.write(0, &[1, 0]);
        dev.write(1, &[1]);
        dev.write(0, &[]);
        assert_eq!(panics.load(Ordering::SeqCst), 0);
        let mut wide = [0xaa; 2];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0, 0]);
    }

    #[test]
    fn round_trip_keeps_reporting() {
        let (dev, _) = device();
        let (mut fresh, panics) = device();
        assert_eq!(round_trip(&dev, &mut fresh), PvpanicState {});
        assert_eq!(fresh.save(), PvpanicState {});
        fresh.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(panics.load(Ordering::SeqCst), 1);
    }
}

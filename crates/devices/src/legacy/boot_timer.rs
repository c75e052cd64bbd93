//! The boot timer: a write-only marker a guest hits to say "I got this far", reported once with the
//! time since the VMM process started.
//!
//! # Guest interface
//! The VMM places the same device on both buses (where: `arch::layout`, port 0x440 and the MMIO
//! page 0xc000_0000 today):
//! * **an I/O port**, one byte: `outb(0x7b, 0x440)`. Used by the tiny test guests (and any guest
//!   kernel code).
//! * **an MMIO page**, a byte at offset 0. Used by Linux user space, which cannot reach an I/O port
//!   without `/dev/port` (CONFIG_DEVPORT needs ISA or PCI): `devmem 0xc0000000 8 123` (busybox,
//!   through /dev/mem).
//!
//! Writing [`BOOT_TIMER_MAGIC`] (123 = 0x7b) the first time logs
//! `boot-timer: <µs> µs since process start`; later writes, other values and other sizes are
//! ignored (shown at debug level). Reads return 0. Nothing the guest does can make the device log
//! twice, fail or panic.

use std::time::Instant;

use log::debug;

use crate::bus::BusDevice;
use crate::seccomp::{SyscallRule, Syscalls};

/// Length of the boot timer's port range.
pub const BOOT_TIMER_PORT_LEN: u64 = 1;
/// Length of the boot timer's MMIO range.
pub const BOOT_TIMER_MMIO_LEN: u64 = 0x1000;
/// The byte a guest writes to mark the end of its boot.
pub const BOOT_TIMER_MAGIC: u8 = 123;

/// Where the report line goes.
type Sink = Box<dyn FnMut(&str) + Send>;

/// The boot-timer device. Insert the same device on the port I/O bus (length
/// [`BOOT_TIMER_PORT_LEN`]) and on the MMIO bus (length [`BOOT_TIMER_MMIO_LEN`]); both act alike.
pub struct BootTimer {
    start: Instant,
    reported: bool,
    sink: Sink,
}

impl BootTimer {
    /// A boot timer measuring from `start` (the VMM's process start) that reports through the
    /// `log` crate at info level, or straight to stderr when info messages are not shown: the
    /// caller asked for the figure, so it is always printed.
    pub fn new(start: Instant) -> Self {
        Self::with_sink(
            start,
            Box::new(|line| {
                if log::log_enabled!(log::Level::Info) {
                    log::info!("{line}");
                } else {
                    eprintln!("{line}");
                }
            }),
        )
    }

    /// A boot timer that hands its one report line to `sink`.
    pub fn with_sink(start: Instant, sink: Sink) -> Self {
        BootTimer {
            start,
            reported: false,
            sink,
        }
    }

    /// Whether the guest has written the magic byte.
    pub fn reported(&self) -> bool {
        self.reported
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.first() != Some(&BOOT_TIMER_MAGIC) {
            debug!(
                "boot-timer: ignored {}-byte write at offset {offset}",
                data.len()
            );
            return;
        }
        if self.reported {
            debug!("boot-timer: ignored a repeated mark");
            return;
        }
        self.reported = true;
        let us = self.start.elapsed().as_micros();
        (self.sink)(&format!("boot-timer: {us} µs since process start"));
    }
}

/// The boot timer's system calls once the guest runs: it reads the clock when the guest writes its
/// register, on a vCPU thread.
pub const SYSCALLS: Syscalls = Syscalls {
    name: "boot timer",
    vcpu: &[SyscallRule::Any(libc::SYS_clock_gettime)],
    event_loop: &[],
};

pub use persist::BootTimerState;

/// Saving and restoring whether the boot timer has reported.
mod persist {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::persist::{Persist, PersistError};

    /// The boot timer's state: whether the guest has already marked its boot, so a restored VM
    /// does not report twice. The start instant is the VMM process's, not the guest's: a restored
    /// timer measures from its own process start.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct BootTimerState {
        /// The guest has written the magic byte.
        pub reported: bool,
    }

    impl Persist for BootTimer {
        const NAME: &'static str = "boot-timer";
        const STATE_VERSION: u16 = 1;
        type State = BootTimerState;

        fn save(&self) -> BootTimerState {
            BootTimerState {
                reported: self.reported,
            }
        }

        fn restore(&mut self, state: BootTimerState) -> Result<(), PersistError> {
            self.reported = state.reported;
            Ok(())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::super::tests::timer;
        use super::*;
        use crate::persist::test_util::round_trip;

        #[test]
        fn a_restored_timer_that_reported_stays_quiet() {
            let (mut dev, lines) = timer(Instant::now());
            dev.write(0, &[BOOT_TIMER_MAGIC]);
            assert_eq!(lines.lock().unwrap().len(), 1);
            let (mut fresh, fresh_lines) = timer(Instant::now());
            assert!(round_trip(&dev, &mut fresh).reported);
            fresh.write(0, &[BOOT_TIMER_MAGIC]);
            assert!(fresh_lines.lock().unwrap().is_empty());
        }

        #[test]
        fn a_restored_timer_that_had_not_reported_reports_once() {
            let (dev, _) = timer(Instant::now());
            let (mut fresh, fresh_lines) = timer(Instant::now());
            assert!(!round_trip(&dev, &mut fresh).reported);
            fresh.write(0, &[BOOT_TIMER_MAGIC]);
            fresh.write(0, &[BOOT_TIMER_MAGIC]);
            assert_eq!(fresh_lines.lock().unwrap().len(), 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    pub(super) fn timer(start: Instant) -> (BootTimer, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let dev = BootTimer::with_sink(
            start,
            Box::new(move |l| sink.lock().unwrap().push(l.to_string())),
        );
        (dev, lines)
    }

    #[test]
    fn reports_once_on_the_magic_byte() {
        let start = Instant::now() - Duration::from_millis(5);
        let (mut dev, lines) = timer(start);
        // Wrong value, wrong offset, empty write: nothing.
        dev.write(0, &[0]);
        dev.write(1, &[BOOT_TIMER_MAGIC]);
        dev.write(0, &[]);
        assert!(lines.lock().unwrap().is_empty());
        assert!(!dev.reported());

        // A wider write whose first (low) byte is the magic counts, as from `movl $123`.
        dev.write(0, &[BOOT_TIMER_MAGIC, 0, 0, 0]);
        dev.write(0, &[BOOT_TIMER_MAGIC]);
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let us: u128 = lines[0]
            .strip_prefix("boot-timer: ")
            .and_then(|r| r.strip_suffix(" µs since process start"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {:?}", lines[0]));
        assert!(us >= 5000, "{us} µs");
        assert!(dev.reported());
    }

    #[test]
    fn reads_return_zero() {
        let (mut dev, _) = timer(Instant::now());
        let mut data = [0xffu8; 4];
        dev.read(0, &mut data);
        assert_eq!(data, [0; 4]);
    }
}

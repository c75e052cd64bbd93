//! An address bus (port I/O or MMIO): maps `[base, base + len)` ranges to devices.
//!
//! Built once by the VM, then shared read-only by every vCPU thread as `Arc<Bus>`; each
//! device sits behind its own mutex, so accesses to different devices never contend.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::Error;

/// A device that answers reads and writes on a bus.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset`, relative to the base the device was inserted at.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset`, relative to the base the device was inserted at.
    fn write(&mut self, offset: u64, data: &[u8]);
}

struct Entry {
    len: u64,
    /// What the device sees as the range's first offset.
    offset: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A set of non-overlapping address ranges, each served by one device.
#[derive(Default)]
pub struct Bus {
    /// Keyed by base address.
    devices: BTreeMap<u64, Entry>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    ///
    /// Fails on a zero length, a range that wraps around, or an overlap with a device already
    /// on the bus.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), Error> {
        self.insert_at(device, base, len, 0)
    }

    /// Puts `device` at `[base, base + len)`, where it sees offsets from `offset` on: one device
    /// can answer several separate ranges (the i8042's ports 0x60 and 0x64, with port 0x61 between
    /// them belonging to another device).
    pub fn insert_at(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
        offset: u64,
    ) -> Result<(), Error> {
        if len == 0 {
            return Err(Error::BusZeroLength { base });
        }
        let end = base
            .checked_add(len)
            .ok_or(Error::BusOverflow { base, len })?;
        // The closest device starting at or below `base`, and the first one starting above it.
        let below = self.devices.range(..=base).next_back();
        let above = self.devices.range(base..).find(|(b, _)| **b != base);
        for (other_base, entry) in below.into_iter().chain(above) {
            let other_end = other_base.saturating_add(entry.len);
            if base < other_end && *other_base < end {
                return Err(Error::BusOverlap {
                    base,
                    len,
                    other_base: *other_base,
                    other_len: entry.len,
                });
            }
        }
        self.devices.insert(
            base,
            Entry {
                len,
                offset,
                device,
            },
        );
        Ok(())
    }

    /// The device covering `[addr, addr + len)` entirely, with `addr`'s offset into it.
    fn lookup(&self, addr: u64, len: usize) -> Option<(&Entry, u64)> {
        let (base, entry) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(len as u64)?;
        (end <= entry.len).then_some((entry, entry.offset.saturating_add(offset)))
    }

    /// Reads from the device covering `[addr, addr + data.len())`.
    ///
    /// Returns `false` (and leaves `data` alone) when no single device covers the whole range;
    /// the caller then answers with `0xff` bytes.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.lookup(addr, data.len()) {
            Some((entry, offset)) => {
                // A poisoned lock means a device panicked earlier; its state is still usable.
                let mut dev = entry.device.lock().unwrap_or_else(|e| e.into_inner());
                dev.read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes to the device covering `[addr, addr + data.len())`.
    ///
    /// Returns `false` when no single device covers the whole range (the write is dropped).
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.lookup(addr, data.len()) {
            Some((entry, offset)) => {
                let mut dev = entry.device.lock().unwrap_or_else(|e| e.into_inner());
                dev.write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last access; reads return the offset as bytes.
    #[derive(Default)]
    struct Probe {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn probe() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe::default()))
    }

    #[test]
    fn insert_rejects_zero_length_overflow_and_overlap() {
        let mut bus = Bus::new();
        assert!(matches!(
            bus.insert(probe(), 0x10, 0),
            Err(Error::BusZeroLength { base: 0x10 })
        ));
        assert!(matches!(
            bus.insert(probe(), u64::MAX, 2),
            Err(Error::BusOverflow { .. })
        ));
        bus.insert(probe(), 0x100, 0x10).unwrap();
        // Same base, inside, straddling either end, enclosing.
        for (base, len) in [
            (0x100, 1),
            (0x105, 2),
            (0xf8, 0x9),
            (0x10f, 0x10),
            (0x0, 0x1000),
        ] {
            let err = bus.insert(probe(), base, len).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::BusOverlap {
                        other_base: 0x100,
                        ..
                    }
                ),
                "{base:#x}"
            );
        }
        // Touching either end is fine.
        bus.insert(probe(), 0xf0, 0x10).unwrap();
        bus.insert(probe(), 0x110, 0x10).unwrap();
        // A later device above an earlier one.
        bus.insert(probe(), 0x200, 0x10).unwrap();
        assert!(bus.insert(probe(), 0x1f0, 0x11).is_err());
        assert!(bus.insert(probe(), u64::MAX - 1, 1).is_ok());
    }

    #[test]
    fn lookup_routes_by_offset_and_requires_full_cover() {
        let mut bus = Bus::new();
        let a = probe();
        let b = probe();
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        bus.insert(b.clone(), 0x400, 8).unwrap();

        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert!(bus.write(0x402, &[7, 8]));
        assert_eq!(b.lock().unwrap().last_write, Some((2, vec![7, 8])));
        assert!(a.lock().unwrap().last_write.is_none());

        // Not covered, or only partly covered.
        let mut data = [0xffu8; 4];
        assert!(!bus.read(0x3f0, &mut data));
        assert!(!bus.read(0x3fe, &mut data));
        assert!(!bus.read(0x408, &mut data[..1]));
        assert_eq!(data, [0xff; 4]);
        assert!(!bus.write(0x3ff, &[1, 2]));
        assert!(!bus.write(0, &[]));
    }

    #[test]
    fn one_device_at_two_ranges_sees_its_offsets() {
        let mut bus = Bus::new();
        let dev = probe();
        bus.insert_at(dev.clone(), 0x60, 1, 0).unwrap();
        bus.insert_at(dev.clone(), 0x64, 1, 4).unwrap();
        bus.insert(probe(), 0x61, 1).unwrap();
        bus.write(0x64, &[0xfe]);
        assert_eq!(dev.lock().unwrap().last_write, Some((4, vec![0xfe])));
        let mut b = [0u8];
        assert!(bus.read(0x60, &mut b));
        assert_eq!(b, [0]);
        assert!(bus.read(0x64, &mut b));
        assert_eq!(b, [4]);
        assert!(!bus.read(0x63, &mut b));
    }

    #[test]
    fn bus_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Bus>();
    }
}

//! The split irqchip's devices, which take every byte a guest writes to them: any sequence of
//! I/O APIC MMIO reads and writes (any offset, any width, any value) and PIT port accesses
//! (counters, control words, port 0x61), with the PIT's timer and the I/O APIC's route-pacing
//! timer served by a real event loop in between. Checks: no panic; the version register never
//! changes; every route the I/O APIC hands to KVM comes from an unmasked entry with a deliverable
//! mode, and is pushed only when it changes.
#![no_main]

use std::sync::{Arc, Mutex};

use devices::bus::BusDevice;
use devices::legacy::{Ioapic, IoapicTimer, IrqRouter, MsiMessage, Pit, PitTimer, IOAPIC_NUM_PINS};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use libfuzzer_sys::arbitrary::{Result as AResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

type Routes = [Option<MsiMessage>; IOAPIC_NUM_PINS];

/// Keeps the last routes pushed and checks each push changes them.
struct Checker(Arc<Mutex<Option<Routes>>>);

impl IrqRouter for Checker {
    fn set_routes(&mut self, routes: &Routes) -> std::io::Result<()> {
        let mut last = self.0.lock().unwrap();
        let before = last.unwrap_or([None; IOAPIC_NUM_PINS]);
        assert_ne!(&before, routes, "a push that changes nothing");
        for msi in routes.iter().flatten() {
            assert_eq!(msi.address & 0xfff0_0ff3, 0xfee0_0000, "{msi:?}");
            assert!(matches!((msi.data >> 8) & 7, 0 | 1 | 4), "{msi:?}");
            assert_eq!(msi.data & !0x7ff, 0, "{msi:?}");
        }
        *last = Some(*routes);
        Ok(())
    }
}

fn version(io: &mut Ioapic) -> u32 {
    io.write(0, &1u32.to_le_bytes());
    let mut b = [0u8; 4];
    io.read(0x10, &mut b);
    u32::from_le_bytes(b)
}

fn run(data: &[u8]) -> AResult<()> {
    let mut u = Unstructured::new(data);
    let pushed = Arc::new(Mutex::new(None));
    let ioapic = Arc::new(Mutex::new(Ioapic::new(Box::new(Checker(pushed.clone())))));
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let pit = Pit::new(irq.try_clone().unwrap()).unwrap();
    let (mut ports, mut speaker) = Pit::port_devices(&pit);
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    em.add_subscriber(Arc::new(Mutex::new(PitTimer(pit))));
    em.add_subscriber(Arc::new(Mutex::new(IoapicTimer(ioapic.clone()))));

    while !u.is_empty() {
        let width = *u.choose(&[1usize, 2, 4, 4, 4, 8, 0, 3])?;
        let mut buf = [0u8; 8];
        u.fill_buffer(&mut buf[..width])?;
        match u.int_in_range(0u8..=7)? {
            0 => {
                // Mostly IOREGSEL and IOWIN, sometimes anywhere.
                let offset = match u.int_in_range(0u8..=3)? {
                    0 => u64::from(u.arbitrary::<u16>()?),
                    1 => 0,
                    _ => 0x10,
                };
                ioapic.lock().unwrap().write(offset, &buf[..width]);
            }
            1 => {
                let offset = u64::from(u.int_in_range(0u8..=0x40)?);
                ioapic.lock().unwrap().read(offset, &mut buf[..width]);
            }
            2 => {
                // A whole entry: select it, write a half.
                let reg = u32::from(u.int_in_range(0u8..=0x3f)?);
                let value = u.arbitrary::<u32>()?;
                let mut io = ioapic.lock().unwrap();
                io.write(0, &reg.to_le_bytes());
                io.write(0x10, &value.to_le_bytes());
            }
            3 => ports.write(u64::from(u.int_in_range(0u8..=4)?), &buf[..width]),
            4 => ports.read(u64::from(u.int_in_range(0u8..=4)?), &mut buf[..width]),
            5 => speaker.write(0, &buf[..width]),
            6 => speaker.read(0, &mut buf[..width]),
            _ => {
                let _ = em.run_with_timeout(0);
                let _ = irq.read();
            }
        }
        assert_eq!(version(&mut ioapic.lock().unwrap()), 0x0017_0011);
    }
    // The routes the I/O APIC reports are the ones it pushed (route changes beyond its burst wait
    // for its pacing timer, served by the event loop above).
    let last = pushed.lock().unwrap().unwrap_or([None; IOAPIC_NUM_PINS]);
    assert_eq!(&last, ioapic.lock().unwrap().routes());
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});

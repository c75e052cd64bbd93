//! COM1: a 16550A UART (vm-superio) on the port I/O bus, and its backend's event-loop side.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, warn};
use vm_superio::serial::SerialEvents;
use vmm_sys_util::eventfd::EventFd;

use super::EventFdTrigger;
use crate::bus::BusDevice;
use crate::chardev::Chardev;
use crate::seccomp::{SyscallRule, Syscalls};
use crate::Error;

/// Number of I/O ports of the UART.
const PORT_COUNT: u64 = 8;
/// Size of the receive FIFO of a 16550A (vm-superio's FIFO size).
const FIFO_SIZE: usize = 64;

/// vm-superio event hooks: tells [`SerialInput`] when the guest has emptied the receive FIFO.
struct DrainEvents {
    drained: EventFd,
}

impl SerialEvents for DrainEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Err(e) = self.drained.write(1) {
            warn!("serial: cannot signal the input side: {e}");
        }
    }
}

type Uart = vm_superio::Serial<EventFdTrigger, DrainEvents, Box<dyn Write + Send>>;

/// The COM1 16550A UART over `vm_superio::Serial`.
///
/// Insert at port 0x3f8 with length 8. `irq` is raised on transmit-empty / data-ready
/// interrupts (the VM registers it as an irqfd for IRQ 4). Each byte the guest transmits is
/// written to `out` and flushed at once, so the output is complete at the end of every burst.
pub struct Serial {
    uart: Uart,
    /// An output error is logged once; the guest keeps running and later bytes are dropped
    /// the same way.
    out_error_logged: bool,
}

impl Serial {
    /// A UART raising `irq` and writing the guest's output to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Result<Self, Error> {
        let drained = EventFd::new(libc::EFD_NONBLOCK).map_err(|error| Error::EventFd {
            what: "serial input",
            error,
        })?;
        Ok(Serial {
            uart: vm_superio::Serial::with_events(
                EventFdTrigger(irq),
                DrainEvents { drained },
                out,
            ),
            out_error_logged: false,
        })
    }

    /// The event signalled when the guest has drained the receive FIFO.
    fn drained_event(&self) -> &EventFd {
        &self.uart.events().drained
    }

    /// Free space in the receive FIFO.
    fn fifo_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues host input for the guest; returns how many bytes fitted.
    fn enqueue(&mut self, bytes: &[u8]) -> usize {
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(e) => {
                debug!("serial: cannot queue input: {e:?}");
                0
            }
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset >= PORT_COUNT {
            debug!(
                "serial: ignored {}-byte read at offset {offset}",
                data.len()
            );
            data.fill(0);
            return;
        }
        data[0] = self.uart.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset >= PORT_COUNT {
            debug!(
                "serial: ignored {}-byte write at offset {offset}",
                data.len()
            );
            return;
        }
        if let Err(e) = self.uart.write(offset as u8, data[0]) {
            if !self.out_error_logged {
                warn!("serial: output error (further errors not logged): {e:?}");
                self.out_error_logged = true;
            }
        }
    }
}

/// The UART's output as a `Write`: every byte goes to the shared [`Chardev`] with
/// [`Chardev::write_lossy`] (the vCPU thread cannot wait for the event loop).
pub struct ChardevWriter(pub Arc<Mutex<Chardev>>);

impl Write for ChardevWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_lossy(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The event-loop side of COM1: feeds host input from the [`Chardev`] into the receive FIFO and
/// serves the backend's own events (socket clients, draining the output backlog).
///
/// When the FIFO is full it stops watching the input and resumes once the guest has emptied
/// the FIFO, so a guest that does not read never makes the event loop spin. On EOF, a read
/// error, or an fd epoll cannot watch (`/dev/null`, a regular file) it stops reading input for
/// good, logging at debug level; the VM keeps running.
pub struct SerialInput {
    serial: Arc<Mutex<Serial>>,
    chardev: Arc<Mutex<Chardev>>,
    drained: EventFd,
}

impl SerialInput {
    /// A subscriber serving `chardev` for `serial` (whose output should be a
    /// [`ChardevWriter`] on the same chardev).
    pub fn new(serial: Arc<Mutex<Serial>>, chardev: Arc<Mutex<Chardev>>) -> Result<Self, Error> {
        let drained = serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drained_event()
            .try_clone()
            .map_err(|error| Error::EventFd {
                what: "serial input",
                error,
            })?;
        Ok(SerialInput {
            serial,
            chardev,
            drained,
        })
    }

    fn lock_serial(&self) -> std::sync::MutexGuard<'_, Serial> {
        self.serial.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_chardev(&self) -> std::sync::MutexGuard<'_, Chardev> {
        self.chardev.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves input into the FIFO; pauses input when the FIFO is full. Never holds both locks
    /// (a vCPU thread takes the serial's, then the chardev's).
    fn on_input(&mut self) {
        let room = self.lock_serial().fifo_room();
        if room == 0 {
            self.lock_chardev().set_input_paused(true);
            return;
        }
        let mut buf = [0u8; FIFO_SIZE];
        let len = room.min(buf.len());
        let n = self.lock_chardev().read_input(&mut buf[..len]);
        if n > 0 {
            // Only the guest touched the FIFO meanwhile, and it can only have made room.
            let queued = self.lock_serial().enqueue(&buf[..n]);
            if queued < n {
                debug!("serial: dropped {} input bytes", n - queued);
            }
        }
    }

    #[cfg(test)]
    fn input_done(&self) -> bool {
        !self.lock_chardev().has_input() || self.lock_chardev().input_finished()
    }
}

impl MutEventSubscriber for SerialInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.drained, EventSet::IN)) {
            warn!("serial: cannot watch the FIFO-drained event: {e}");
        }
        self.lock_chardev().init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        use std::os::fd::AsRawFd;
        if events.fd() == self.drained.as_raw_fd() {
            // Non-blocking: an error only means nothing was pending.
            let _ = self.drained.read();
            self.lock_chardev().set_input_paused(false);
        } else if self.lock_chardev().owns(events.fd()) {
            let ready = self.lock_chardev().handle_event(&events);
            if ready.input {
                self.on_input();
            }
        } else {
            debug!("serial: unexpected event on fd {}", events.fd());
        }
        self.lock_chardev().update_interest(ops);
    }
}

/// The UART's system calls once the guest runs (its backend's are declared in [`crate::chardev`]):
/// on a vCPU thread, the guest's register accesses raise the interrupt (an eventfd write); on the
/// event loop, console input does too.
pub const SYSCALLS: Syscalls = Syscalls {
    name: "serial",
    vcpu: &[SyscallRule::Any(libc::SYS_write)],
    event_loop: &[
        SyscallRule::Any(libc::SYS_read),
        SyscallRule::Any(libc::SYS_write),
    ],
};

pub use persist::SerialState;

/// Saving and restoring the UART's registers and receive FIFO.
mod persist {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::persist::{Persist, PersistError};

    /// The 16550A's guest-visible state: its registers and the bytes waiting in the receive FIFO.
    /// Not saved: the output backend and whether an output error was logged (host side), and
    /// input the backend holds that has not reached the FIFO yet.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct SerialState {
        /// Divisor latch, low byte.
        pub baud_divisor_low: u8,
        /// Divisor latch, high byte.
        pub baud_divisor_high: u8,
        /// Interrupt enable register.
        pub interrupt_enable: u8,
        /// Interrupt identification register.
        pub interrupt_identification: u8,
        /// Line control register.
        pub line_control: u8,
        /// Line status register.
        pub line_status: u8,
        /// Modem control register.
        pub modem_control: u8,
        /// Modem status register.
        pub modem_status: u8,
        /// Scratch register.
        pub scratch: u8,
        /// The receive FIFO, oldest byte first (at most 64 bytes).
        pub rx_fifo: Vec<u8>,
    }

    impl Persist for Serial {
        const NAME: &'static str = "serial";
        const STATE_VERSION: u16 = 1;
        type State = SerialState;

        fn save(&self) -> SerialState {
            let s = self.uart.state();
            SerialState {
                baud_divisor_low: s.baud_divisor_low,
                baud_divisor_high: s.baud_divisor_high,
                interrupt_enable: s.interrupt_enable,
                interrupt_identification: s.interrupt_identification,
                line_control: s.line_control,
                line_status: s.line_status,
                modem_control: s.modem_control,
                modem_status: s.modem_status,
                scratch: s.scratch,
                rx_fifo: s.in_buffer,
            }
        }

        /// Rebuilds the UART from `state` around this one's interrupt, drain event and output
        /// (vm-superio builds a UART from a state, it cannot load one), raising the interrupt if
        /// the state has one pending.
        fn restore(&mut self, state: SerialState) -> Result<(), PersistError> {
            if state.rx_fifo.len() > FIFO_SIZE {
                return Err(PersistError::Mismatch {
                    device: Self::NAME,
                    why: format!(
                        "{} bytes in the receive FIFO, which holds {FIFO_SIZE}",
                        state.rx_fifo.len()
                    ),
                });
            }
            // LSR: data ready, THR empty and transmitter idle (always: output is written at
            // once), no error bits. IIR: "none" alone, or THR empty and/or data available.
            let (lsr, iir) = (state.line_status, state.interrupt_identification);
            if lsr & !0x61 != 0 || lsr & 0x60 != 0x60 || ![1, 2, 4, 6].contains(&iir) {
                return Err(PersistError::Mismatch {
                    device: Self::NAME,
                    why: format!("LSR {lsr:#04x} or IIR {iir:#04x}: this UART never has it"),
                });
            }
            let backend = |what| {
                move |error| PersistError::Backend {
                    device: Self::NAME,
                    what,
                    error,
                }
            };
            let irq = self
                .uart
                .interrupt_evt()
                .0
                .try_clone()
                .map_err(backend("duplicate the interrupt eventfd"))?;
            let drained = self
                .uart
                .events()
                .drained
                .try_clone()
                .map_err(backend("duplicate the FIFO-drained eventfd"))?;
            let superio_state = vm_superio::serial::SerialState {
                baud_divisor_low: state.baud_divisor_low,
                baud_divisor_high: state.baud_divisor_high,
                interrupt_enable: state.interrupt_enable,
                interrupt_identification: state.interrupt_identification,
                line_control: state.line_control,
                line_status: state.line_status,
                modem_control: state.modem_control,
                modem_status: state.modem_status,
                scratch: state.scratch,
                in_buffer: state.rx_fifo,
            };
            let sink: Box<dyn Write + Send> = Box::new(io::sink());
            let uart = vm_superio::Serial::from_state(
                &superio_state,
                EventFdTrigger(irq),
                DrainEvents { drained },
                sink,
            )
            .map_err(|e| match e {
                vm_superio::serial::Error::Trigger(error) => PersistError::Backend {
                    device: Self::NAME,
                    what: "raise the pending interrupt",
                    error,
                },
                other => PersistError::Mismatch {
                    device: Self::NAME,
                    why: format!("{other:?}"),
                },
            })?;
            let old = std::mem::replace(&mut self.uart, uart);
            *self.uart.writer_mut() = old.into_writer();
            Ok(())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::super::tests::{serial, SharedBuf, DATA, IER, LCR, LSR, SCR};
        use super::*;
        use crate::persist::test_util::round_trip;
        use crate::persist::Versioned;

        fn read(s: &mut Serial, offset: u64) -> u8 {
            let mut b = [0u8];
            s.read(offset, &mut b);
            b[0]
        }

        /// A UART the guest has programmed: 9600 baud, 7N1, a scratch value, RX interrupt on,
        /// and host input waiting in its FIFO.
        fn programmed() -> (Serial, EventFd, SharedBuf) {
            let (mut s, irq, out) = serial();
            s.write(LCR, &[0x80]);
            s.write(DATA, &[12]);
            s.write(IER, &[0]);
            s.write(LCR, &[0x02]);
            s.write(SCR, &[0x5a]);
            s.write(IER, &[0x01]);
            assert_eq!(s.enqueue(b"abc"), 3);
            (s, irq, out)
        }

        #[test]
        fn round_trip_keeps_registers_and_fifo() {
            let (s, _irq, _out) = programmed();
            let (mut fresh, _irq2, _out2) = serial();
            let state = round_trip(&s, &mut fresh);
            assert_eq!(state.rx_fifo, b"abc");
            assert_eq!((state.baud_divisor_low, state.baud_divisor_high), (12, 0));
            assert_eq!(state.scratch, 0x5a);
        }

        #[test]
        fn restored_uart_reads_the_fifo_and_writes_to_its_own_output() {
            let (s, _irq, _out) = programmed();
            let (mut fresh, irq2, out2) = serial();
            fresh.restore_versioned(s.save_versioned()).unwrap();
            // The pending data-ready interrupt is raised again on the new line.
            assert_eq!(irq2.read().unwrap(), 1);
            assert_eq!(read(&mut fresh, SCR), 0x5a);
            assert_eq!(read(&mut fresh, LCR), 0x02);
            let mut got = Vec::new();
            while read(&mut fresh, LSR) & 1 != 0 {
                got.push(read(&mut fresh, DATA));
            }
            assert_eq!(got, b"abc");
            // The output still goes to the fresh device's backend.
            fresh.write(DATA, b"z");
            assert_eq!(out2.0.lock().unwrap().as_slice(), b"z");
        }

        #[test]
        fn an_overfull_fifo_is_refused_and_changes_nothing() {
            let (s, _irq, _out) = programmed();
            let mut state = s.save_versioned();
            state.state.rx_fifo = vec![0; FIFO_SIZE + 1];
            let (mut fresh, _irq2, _out2) = serial();
            let before = fresh.save();
            let err = fresh
                .restore_versioned(Versioned {
                    version: state.version,
                    state: state.state,
                })
                .unwrap_err();
            assert!(matches!(err, PersistError::Mismatch { .. }), "{err}");
            assert_eq!(
                err.to_string(),
                "serial: saved state does not fit: 65 bytes in the receive FIFO, which holds 64"
            );
            assert_eq!(fresh.save(), before);
        }

        /// This UART's transmitter is always empty (output goes straight to the backend) and it
        /// reports no line errors; its interrupt identification is "none", THR empty and/or
        /// data available. A state saying the transmitter is busy would leave a guest that
        /// polls LSR before each byte waiting for ever; other values are refused likewise.
        #[test]
        fn line_and_interrupt_states_the_uart_never_has_are_refused() {
            let (s, _irq, _out) = programmed();
            let good = s.save();
            assert_eq!(good.line_status, 0x61);
            let mut bad = Vec::new();
            for lsr in [0x01, 0x41, 0x21, 0xe1, 0x63] {
                let mut st = good.clone();
                st.line_status = lsr;
                bad.push(st);
            }
            for iir in [0x00, 0x03, 0x08, 0xc1] {
                let mut st = good.clone();
                st.interrupt_identification = iir;
                bad.push(st);
            }
            let (mut fresh, _irq2, _out2) = serial();
            let before = fresh.save();
            for state in bad {
                let (lsr, iir) = (state.line_status, state.interrupt_identification);
                let err = fresh.restore(state);
                assert!(
                    matches!(err, Err(PersistError::Mismatch { .. })),
                    "LSR {lsr:#x} IIR {iir:#x}: {err:?}"
                );
                assert_eq!(fresh.save(), before);
            }
            fresh.restore(good).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_manager::{EventManager, SubscriberOps};
    use std::fs::File;
    use std::os::fd::FromRawFd;

    pub(super) use crate::test_util::SharedBuf;

    // Register offsets from the base port.
    pub(super) const DATA: u64 = 0;
    pub(super) const IER: u64 = 1;
    pub(super) const LCR: u64 = 3;
    pub(super) const LSR: u64 = 5;
    pub(super) const SCR: u64 = 7;
    const LSR_DATA_READY: u8 = 1;

    pub(super) fn serial() -> (Serial, EventFd, SharedBuf) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let out = SharedBuf::default();
        let s = Serial::new(irq.try_clone().unwrap(), Box::new(out.clone())).unwrap();
        (s, irq, out)
    }

    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe(2) to fill.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both fds were just created by pipe(2) and are owned by nobody else.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    fn read_reg(s: &Arc<Mutex<Serial>>, offset: u64) -> u8 {
        let mut b = [0u8];
        s.lock().unwrap().read(offset, &mut b);
        b[0]
    }

    #[test]
    fn output_bytes_reach_the_writer() {
        let (mut s, irq, out) = serial();
        for b in b"hello\n" {
            s.write(DATA, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hello\n");
        // Odd sizes and offsets are ignored.
        s.write(DATA, b"xy");
        s.write(9, b"z");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hello\n");
        // Enabling the THR-empty interrupt raises the irq.
        assert!(irq.read().is_err());
        s.write(IER, &[0x2]);
        assert_eq!(irq.read().unwrap(), 1);
        let mut b = [0u8];
        s.read(LSR, &mut b);
        assert_ne!(b[0] & 0x20, 0, "transmitter empty");
    }

    #[test]
    fn input_pauses_when_fifo_full_and_resumes_when_drained() {
        let (s, _irq, _out) = serial();
        let s = Arc::new(Mutex::new(s));
        let (rx, mut tx) = pipe();
        let chardev = Chardev::null("serial").unwrap().with_input(rx);
        let input = SerialInput::new(s.clone(), Arc::new(Mutex::new(chardev))).unwrap();
        let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
        em.add_subscriber(Arc::new(Mutex::new(input)));

        let data: Vec<u8> = (0..100u8).collect();
        tx.write_all(&data).unwrap();
        // Fill the FIFO, then the next wakeup pauses input; after that nothing is ready.
        for _ in 0..4 {
            em.run_with_timeout(50).unwrap();
        }
        assert_eq!(s.lock().unwrap().fifo_room(), 0);
        assert_eq!(
            em.run_with_timeout(50).unwrap(),
            0,
            "paused input must not wake the loop"
        );

        // The guest drains the FIFO.
        let mut got = Vec::new();
        while read_reg(&s, LSR) & LSR_DATA_READY != 0 {
            got.push(read_reg(&s, DATA));
        }
        assert_eq!(got.len(), FIFO_SIZE);
        // Drained event, then the rest of the input.
        for _ in 0..3 {
            em.run_with_timeout(50).unwrap();
        }
        while read_reg(&s, LSR) & LSR_DATA_READY != 0 {
            got.push(read_reg(&s, DATA));
        }
        assert_eq!(got, data);

        // EOF stops input quietly.
        drop(tx);
        em.run_with_timeout(50).unwrap();
        em.run_with_timeout(50).unwrap();
        assert_eq!(em.run_with_timeout(50).unwrap(), 0);
    }

    #[test]
    fn unwatchable_input_is_ignored() {
        let (s, _irq, _out) = serial();
        let s = Arc::new(Mutex::new(s));
        let chardev = Chardev::null("serial")
            .unwrap()
            .with_input(File::open("/dev/null").unwrap());
        let input = SerialInput::new(s.clone(), Arc::new(Mutex::new(chardev))).unwrap();
        let input = Arc::new(Mutex::new(input));
        let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
        em.add_subscriber(input.clone());
        assert!(input.lock().unwrap().input_done());
        assert_eq!(em.run_with_timeout(10).unwrap(), 0);
    }
}

//! The 8254 programmable interval timer of a split irqchip, in user space: three counters at
//! 1.193182 MHz, channel 0 wired to IRQ 0, channel 2 gated and read through port 0x61.
//!
//! # Guest interface
//! * Ports 0x40–0x42: the counters; 0x43: the control word (modes 0–5, binary or BCD, LSB, MSB or
//!   LSB-then-MSB access, counter latch, read-back of counts and status).
//! * Port 0x61: bit 0 gates channel 2, bit 1 (speaker data) is kept, bit 4 toggles every 15 µs (the
//!   old refresh-request bit that delay loops poll), bit 5 is channel 2's output.
//!
//! Counters are not ticked: a read computes the count from the time since the counter was loaded,
//! so reading costs one exit and is exact. Channel 0's output edges become interrupts: when a count
//! is loaded the VMM arms a timerfd for the next rising edge (periodic in modes 2 and 3), and the
//! event loop, woken by it, signals IRQ 0. Like KVM's in-kernel PIT with reinjection off, ticks the
//! guest could not take in time are merged, never replayed; and a periodic interrupt comes at most
//! every [`MIN_IRQ_PERIOD`] (KVM's bound too), so a guest that programs a count of 2 gets 5000
//! interrupts a second, not 600 000 (its reads still see the true count).
//!
//! Channels 0 and 1 have their gates tied high, so modes 1 and 5 (started by a gate's rising edge)
//! count only on channel 2. A count written while a counter runs takes effect at once, as in QEMU
//! and KVM.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, warn};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::bus::BusDevice;
use crate::seccomp::{SyscallRule, Syscalls};
use crate::Error;

/// The counters' input clock.
pub const PIT_FREQ_HZ: u64 = 1_193_182;
/// Number of PIT ports: counters 0–2, then the control word at +3.
pub const PIT_PORT_LEN: u64 = 4;
/// Shortest period of channel 0's periodic interrupts.
pub const MIN_IRQ_PERIOD: Duration = Duration::from_micros(200);

const CONTROL: u64 = 3;
/// Port 0x61 bit 4 toggles at this period.
const REFRESH_PERIOD_NS: u128 = 15_085;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Lsb = 1,
    Msb = 2,
    Word = 3,
}

impl Access {
    fn from_bits(bits: u8) -> Option<Access> {
        match bits & 3 {
            1 => Some(Access::Lsb),
            2 => Some(Access::Msb),
            3 => Some(Access::Word),
            _ => None,
        }
    }
}

/// A latched count being read out.
#[derive(Clone, Copy, Debug)]
struct Latch {
    value: u16,
    /// The MSB is next (the LSB of a word has been read).
    msb_next: bool,
}

/// One counter.
#[derive(Debug)]
struct Channel {
    mode: u8,
    access: Access,
    bcd: bool,
    /// The count as loaded (1..=0x10000 in binary, 1..=10000 in BCD), none since the control word.
    count: Option<u32>,
    /// When the current counting started; none while not counting.
    start: Option<Instant>,
    /// Ticks counted before a pause (modes 0 and 4 with the gate low).
    paused_ticks: u64,
    gate: bool,
    /// The LSB of a word being written.
    lsb_written: Option<u8>,
    /// The live count's MSB is next (word access).
    read_msb_next: bool,
    latch: Option<Latch>,
    status_latch: Option<u8>,
    /// A count was written and has not been loaded into the counter yet.
    null_count: bool,
}

impl Channel {
    fn new(gate: bool) -> Channel {
        Channel {
            mode: 0,
            access: Access::Word,
            bcd: false,
            count: None,
            start: None,
            paused_ticks: 0,
            gate,
            lsb_written: None,
            read_msb_next: false,
            latch: None,
            status_latch: None,
            null_count: false,
        }
    }

    fn wrap(&self) -> u64 {
        if self.bcd {
            10_000
        } else {
            0x1_0000
        }
    }

    /// Ticks counted so far, or none when the counter has not started.
    fn ticks(&self, now: Instant) -> Option<u64> {
        let running = self.start.map(|s| ticks_between(s, now));
        match (running, self.paused_ticks) {
            (Some(t), paused) => Some(paused.saturating_add(t)),
            (None, 0) => None,
            (None, paused) => Some(paused),
        }
    }

    /// The counting element's value.
    fn value(&self, now: Instant) -> u16 {
        let Some(count) = self.count else {
            return 0;
        };
        let n = u64::from(count);
        let wrap = self.wrap();
        let raw = match self.ticks(now) {
            // Loaded but waiting for a trigger (modes 1 and 5) or for the gate.
            None => n % wrap,
            Some(t) => {
                let left = match self.mode {
                    2 => n - t % n,
                    3 => n - t.saturating_mul(2) % n,
                    _ => n + wrap - t % wrap,
                };
                left % wrap
            }
        };
        if self.bcd {
            to_bcd(raw as u16)
        } else {
            raw as u16
        }
    }

    /// The output pin.
    fn out(&self, now: Instant) -> bool {
        let Some(count) = self.count else {
            // After a control word: low in mode 0, high otherwise.
            return self.mode != 0;
        };
        let n = u64::from(count);
        let Some(t) = self.ticks(now) else {
            return self.mode != 0;
        };
        match self.mode {
            0 | 1 => t >= n,
            2 => t % n != n - 1,
            3 => t % n < n.div_ceil(2),
            _ => t != n,
        }
    }

    fn status(&self, now: Instant) -> u8 {
        (u8::from(self.out(now)) << 7)
            | (u8::from(self.null_count) << 6)
            | ((self.access as u8) << 4)
            | (self.mode << 1)
            | u8::from(self.bcd)
    }

    fn control(&mut self, word: u8) {
        let Some(access) = Access::from_bits(word >> 4) else {
            return;
        };
        let mode = (word >> 1) & 7;
        self.mode = if mode > 5 { mode - 4 } else { mode };
        self.access = access;
        self.bcd = word & 1 == 1;
        self.count = None;
        self.start = None;
        self.paused_ticks = 0;
        self.lsb_written = None;
        self.read_msb_next = false;
        self.latch = None;
        self.null_count = true;
    }

    fn latch_count(&mut self, now: Instant) {
        if self.latch.is_none() {
            self.latch = Some(Latch {
                value: self.value(now),
                msb_next: self.access == Access::Msb,
            });
        }
    }

    /// A byte written to the counter's port: loads a count once it is complete.
    fn write(&mut self, byte: u8, now: Instant) -> bool {
        let raw = match (self.access, self.lsb_written.take()) {
            (Access::Lsb, _) => u16::from(byte),
            (Access::Msb, _) => u16::from(byte) << 8,
            (Access::Word, None) => {
                self.lsb_written = Some(byte);
                // Mode 0 stops counting at the first byte of a new count.
                if self.mode == 0 {
                    self.pause(now);
                }
                return false;
            }
            (Access::Word, Some(lsb)) => u16::from_le_bytes([lsb, byte]),
        };
        self.load(raw, now);
        true
    }

    fn load(&mut self, raw: u16, now: Instant) {
        let count = if self.bcd {
            u32::from(from_bcd(raw))
        } else {
            u32::from(raw)
        };
        self.count = Some(if count == 0 {
            self.wrap() as u32
        } else {
            count
        });
        self.paused_ticks = 0;
        // Modes 1 and 5 wait for the gate's rising edge; the others start now, unless gated off.
        let starts = !matches!(self.mode, 1 | 5) && self.gate;
        self.start = starts.then_some(now);
        self.null_count = !starts;
    }

    fn set_gate(&mut self, gate: bool, now: Instant) {
        let rising = gate && !self.gate;
        let falling = !gate && self.gate;
        self.gate = gate;
        if self.count.is_none() || !(rising || falling) {
            return;
        }
        match self.mode {
            // Modes 0 and 4 pause while the gate is low and go on from there.
            0 | 4 if falling => self.pause(now),
            0 | 4 => self.start = Some(now),
            // Modes 2 and 3 stop while the gate is low; a rising gate (re)starts every mode but
            // 0 and 4 from the full count.
            2 | 3 if falling => {
                self.start = None;
                self.paused_ticks = 0;
            }
            _ if rising => {
                self.paused_ticks = 0;
                self.start = Some(now);
            }
            _ => {}
        }
        if rising {
            self.null_count = false;
        }
    }

    /// Stops counting, keeping the ticks counted so far.
    fn pause(&mut self, now: Instant) {
        self.paused_ticks = self.ticks(now).unwrap_or(0);
        self.start = None;
    }

    fn read(&mut self, now: Instant) -> u8 {
        if let Some(status) = self.status_latch.take() {
            return status;
        }
        if let Some(mut latch) = self.latch {
            let [lsb, msb] = latch.value.to_le_bytes();
            if latch.msb_next {
                self.latch = None;
                return msb;
            }
            if self.access == Access::Word {
                latch.msb_next = true;
                self.latch = Some(latch);
            } else {
                self.latch = None;
            }
            return lsb;
        }
        let [lsb, msb] = self.value(now).to_le_bytes();
        match self.access {
            Access::Lsb => lsb,
            Access::Msb => msb,
            Access::Word => {
                self.read_msb_next = !self.read_msb_next;
                if self.read_msb_next {
                    lsb
                } else {
                    msb
                }
            }
        }
    }

    /// When channel 0's next interrupt (a rising edge of its output) is due, and its period.
    fn next_edge(&self, now: Instant) -> Option<(Duration, Option<Duration>)> {
        let n = u64::from(self.count?);
        let t = self.ticks(now)?;
        self.start?;
        match self.mode {
            0 if t < n => Some((ticks_duration(n - t), None)),
            4 if t <= n => Some((ticks_duration(n + 1 - t), None)),
            2 | 3 => {
                let period = ticks_duration(n).max(MIN_IRQ_PERIOD);
                let first = ticks_duration(n - t % n).max(MIN_IRQ_PERIOD);
                Some((first, Some(period)))
            }
            _ => None,
        }
    }
}

/// Whole ticks between two instants, to the nearest (a guest cannot see the difference from the
/// truncated count: its every read costs microseconds; the nearest makes the conversions below
/// exact inverses).
fn ticks_between(from: Instant, to: Instant) -> u64 {
    let ns = to.saturating_duration_since(from).as_nanos();
    let ticks = (ns * u128::from(PIT_FREQ_HZ) + 500_000_000) / 1_000_000_000;
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

/// The time `ticks` take, to the nearest nanosecond.
fn ticks_duration(ticks: u64) -> Duration {
    let hz = u128::from(PIT_FREQ_HZ);
    let ns = (u128::from(ticks) * 1_000_000_000 + hz / 2) / hz;
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

fn from_bcd(v: u16) -> u16 {
    let digit = |shift: u16| ((v >> shift) & 0xf).min(9);
    digit(12) * 1000 + digit(8) * 100 + digit(4) * 10 + digit(0)
}

fn to_bcd(v: u16) -> u16 {
    let v = v % 10_000;
    ((v / 1000) << 12) | ((v / 100 % 10) << 8) | ((v / 10 % 10) << 4) | (v % 10)
}

/// The PIT's state, shared by its two port ranges and its timer subscriber.
pub struct Pit {
    channels: [Channel; 3],
    /// Port 0x61 bit 1.
    speaker_data: bool,
    /// Fires when channel 0's output rises (non-blocking, armed by [`Pit::arm`]).
    timer: TimerFd,
    irq: EventFd,
    epoch: Instant,
    /// A timer error is reported once.
    timer_failed: bool,
}

impl Pit {
    /// A PIT whose channel 0 signals `irq` (the VMM's irqfd for IRQ 0). Nothing counts until the
    /// guest programs a counter.
    pub fn new(irq: EventFd) -> Result<Arc<Mutex<Pit>>, Error> {
        Ok(Arc::new(Mutex::new(Pit {
            channels: [Channel::new(true), Channel::new(true), Channel::new(false)],
            speaker_data: false,
            timer: crate::nonblocking_timer("PIT")?,
            irq,
            epoch: Instant::now(),
            timer_failed: false,
        })))
    }

    /// The device for ports 0x40–0x43 and the one for port 0x61, sharing `pit`.
    pub fn port_devices(pit: &Arc<Mutex<Pit>>) -> (PitPorts, SpeakerPort) {
        (PitPorts(pit.clone()), SpeakerPort(pit.clone()))
    }

    fn read_counter(&mut self, channel: usize, now: Instant) -> u8 {
        self.channels[channel].read(now)
    }

    fn write_counter(&mut self, channel: usize, byte: u8, now: Instant) {
        let changed = self.channels[channel].write(byte, now);
        if channel == 0 {
            if changed {
                self.arm(now);
            } else if self.channels[0].start.is_none() {
                self.disarm();
            }
        }
    }

    fn write_control(&mut self, word: u8, now: Instant) {
        let select = usize::from(word >> 6);
        if select == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear latches status, bits 1–3 pick the
            // channels.
            for (i, channel) in self.channels.iter_mut().enumerate() {
                if word & (2 << i) == 0 {
                    continue;
                }
                if word & 0x20 == 0 {
                    channel.latch_count(now);
                }
                if word & 0x10 == 0 && channel.status_latch.is_none() {
                    channel.status_latch = Some(channel.status(now));
                }
            }
            return;
        }
        if (word >> 4) & 3 == 0 {
            self.channels[select].latch_count(now);
            return;
        }
        self.channels[select].control(word);
        if select == 0 {
            self.disarm();
        }
    }

    fn read_speaker(&self, now: Instant) -> u8 {
        let ch2 = &self.channels[2];
        let refresh =
            (now.saturating_duration_since(self.epoch).as_nanos() / REFRESH_PERIOD_NS) & 1;
        u8::from(ch2.gate)
            | (u8::from(self.speaker_data) << 1)
            | ((refresh as u8) << 4)
            | (u8::from(ch2.out(now)) << 5)
    }

    fn write_speaker(&mut self, value: u8, now: Instant) {
        self.speaker_data = value & 2 != 0;
        self.channels[2].set_gate(value & 1 != 0, now);
    }

    /// Arms the timer for channel 0's next rising edge, or disarms it.
    fn arm(&mut self, now: Instant) {
        let result = match self.channels[0].next_edge(now) {
            Some((first, period)) => self.timer.reset(first.max(Duration::from_nanos(1)), period),
            None => self.timer.clear(),
        };
        if let Err(e) = result {
            self.timer_error(e.into());
        }
    }

    fn disarm(&mut self) {
        if let Err(e) = self.timer.clear() {
            self.timer_error(e.into());
        }
    }

    fn timer_error(&mut self, e: io::Error) {
        if !self.timer_failed {
            self.timer_failed = true;
            warn!("PIT: timer error: {e}; channel 0 interrupts may stop");
        }
    }

    /// The timer fired: raise IRQ 0 once, however many edges passed.
    fn tick(&mut self) {
        match self.timer.wait() {
            Ok(0) => {}
            Ok(_) => {
                if let Err(e) = self.irq.write(1) {
                    self.timer_error(e);
                }
            }
            Err(e) if e.errno() == libc::EAGAIN => {}
            Err(e) => self.timer_error(e.into()),
        }
    }
}

fn lock(pit: &Mutex<Pit>) -> std::sync::MutexGuard<'_, Pit> {
    pit.lock().unwrap_or_else(|p| p.into_inner())
}

/// Ports 0x40–0x43 (insert at the PIT's first port with length [`PIT_PORT_LEN`]).
pub struct PitPorts(Arc<Mutex<Pit>>);

impl BusDevice for PitPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let now = Instant::now();
        let mut pit = lock(&self.0);
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = match offset.saturating_add(i as u64) {
                channel @ 0..=2 => pit.read_counter(channel as usize, now),
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let now = Instant::now();
        let mut pit = lock(&self.0);
        for (i, &byte) in data.iter().enumerate() {
            match offset.saturating_add(i as u64) {
                channel @ 0..=2 => pit.write_counter(channel as usize, byte, now),
                CONTROL => pit.write_control(byte, now),
                other => debug!("PIT: ignored a write at offset {other}"),
            }
        }
    }
}

/// Port 0x61, the NMI status and control port (insert with length 1).
pub struct SpeakerPort(Arc<Mutex<Pit>>);

impl BusDevice for SpeakerPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        let value = lock(&self.0).read_speaker(Instant::now());
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            lock(&self.0).write_speaker(value, Instant::now());
        }
    }
}

/// The event-loop side: turns channel 0's timer into IRQ 0.
pub struct PitTimer(pub Arc<Mutex<Pit>>);

impl MutEventSubscriber for PitTimer {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.event_set().contains(EventSet::IN) {
            lock(&self.0).tick();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let fd = lock(&self.0).timer.as_raw_fd();
        if let Err(e) = ops.add(Events::with_data_raw(fd, 0, EventSet::IN)) {
            warn!("PIT: cannot watch the timer: {e:?}; channel 0 will raise no interrupts");
        }
    }
}

/// The PIT's system calls once the guest runs. On a vCPU thread, programming channel 0 (re)arms or
/// disarms its timerfd; on the event loop, the expired timer is read and the interrupt eventfd
/// written.
pub const SYSCALLS: Syscalls = Syscalls {
    name: "PIT",
    vcpu: &[
        SyscallRule::Any(libc::SYS_timerfd_settime),
        SyscallRule::Any(libc::SYS_clock_gettime),
    ],
    event_loop: &[
        SyscallRule::Any(libc::SYS_read),
        SyscallRule::Any(libc::SYS_write),
        SyscallRule::Any(libc::SYS_clock_gettime),
    ],
};

pub use persist::{PitChannelState, PitState};

/// Saving and restoring the counters; restoring re-arms channel 0's timer.
mod persist {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::persist::{Persist, PersistError};

    /// One counter's state. Times are saved relative to the moment of saving, so the count goes
    /// on from where it was, whatever the clocks of the two processes.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct PitChannelState {
        /// Counter mode, 0–5.
        pub mode: u8,
        /// Access mode: 1 LSB, 2 MSB, 3 LSB then MSB.
        pub access: u8,
        /// BCD counting.
        pub bcd: bool,
        /// The count as loaded (1..=0x10000, or 1..=10000 in BCD); none since the control word.
        pub count: Option<u32>,
        /// For how long (ns) the counter had been counting when saved; none while not counting.
        pub counting_ns: Option<u64>,
        /// Ticks counted before a pause.
        pub paused_ticks: u64,
        /// The gate input.
        pub gate: bool,
        /// The LSB of a word being written.
        pub lsb_written: Option<u8>,
        /// The live count's MSB is read next.
        pub read_msb_next: bool,
        /// A latched count not read out yet.
        pub latch: Option<u16>,
        /// The latched count's MSB is read next.
        pub latch_msb_next: bool,
        /// A latched status byte not read yet.
        pub status_latch: Option<u8>,
        /// A count was written and not loaded yet.
        pub null_count: bool,
    }

    /// The PIT's guest-visible state: the three counters and port 0x61's speaker-data bit. Not
    /// saved: the phase of port 0x61's refresh bit (it toggles every 15 µs from the device's
    /// creation; no guest can tell) and whether a timer error was logged.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct PitState {
        /// Channels 0, 1 and 2.
        pub channels: Vec<PitChannelState>,
        /// Port 0x61 bit 1.
        pub speaker_data: bool,
    }

    impl Channel {
        fn save(&self, now: Instant) -> PitChannelState {
            PitChannelState {
                mode: self.mode,
                access: self.access as u8,
                bcd: self.bcd,
                count: self.count,
                counting_ns: self.start.map(|s| {
                    u64::try_from(now.saturating_duration_since(s).as_nanos()).unwrap_or(u64::MAX)
                }),
                paused_ticks: self.paused_ticks,
                gate: self.gate,
                lsb_written: self.lsb_written,
                read_msb_next: self.read_msb_next,
                latch: self.latch.map(|l| l.value),
                latch_msb_next: self.latch.is_some_and(|l| l.msb_next),
                status_latch: self.status_latch,
                null_count: self.null_count,
            }
        }

        /// The channel `state` describes, or why it cannot be.
        fn from_state(state: &PitChannelState, now: Instant) -> Result<Channel, String> {
            if state.mode > 5 {
                return Err(format!("mode {} (0 to 5)", state.mode));
            }
            let access = Access::from_bits(state.access)
                .filter(|a| *a as u8 == state.access)
                .ok_or_else(|| format!("access mode {} (1 to 3)", state.access))?;
            let wrap: u32 = if state.bcd { 10_000 } else { 0x1_0000 };
            if let Some(count) = state.count.filter(|c| !(1..=wrap).contains(c)) {
                return Err(format!("count {count} (1 to {wrap})"));
            }
            let start = match state.counting_ns {
                None => None,
                Some(ns) => Some(now.checked_sub(Duration::from_nanos(ns)).ok_or_else(|| {
                    format!("counting for {ns} ns, longer than this host's clock has run")
                })?),
            };
            Ok(Channel {
                mode: state.mode,
                access,
                bcd: state.bcd,
                count: state.count,
                start,
                paused_ticks: state.paused_ticks,
                gate: state.gate,
                lsb_written: state.lsb_written,
                read_msb_next: state.read_msb_next,
                latch: state.latch.map(|value| Latch {
                    value,
                    msb_next: state.latch_msb_next,
                }),
                status_latch: state.status_latch,
                null_count: state.null_count,
            })
        }
    }

    impl Pit {
        pub(super) fn save_at(&self, now: Instant) -> PitState {
            PitState {
                channels: self.channels.iter().map(|c| c.save(now)).collect(),
                speaker_data: self.speaker_data,
            }
        }

        /// Checks every counter, re-arms channel 0's timer for its next edge, and only then takes
        /// the state, so a refused state or a failing timer leaves the PIT as it was.
        pub(super) fn restore_at(
            &mut self,
            state: PitState,
            now: Instant,
        ) -> Result<(), PersistError> {
            let mismatch = |why| PersistError::Mismatch {
                device: <Pit as Persist>::NAME,
                why,
            };
            let channels: Vec<Channel> = state
                .channels
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    Channel::from_state(c, now)
                        .map_err(|why| mismatch(format!("channel {i}: {why}")))
                })
                .collect::<Result<_, _>>()?;
            let channels: [Channel; 3] = channels.try_into().map_err(|c: Vec<Channel>| {
                mismatch(format!("{} channels, the PIT has 3", c.len()))
            })?;
            // Only channel 2's gate is on a port (0x61); the others are wired high.
            if let Some(i) = channels[..2].iter().position(|c| !c.gate) {
                return Err(mismatch(format!("channel {i}: gate low (wired high)")));
            }
            let armed = match channels[0].next_edge(now) {
                Some((first, period)) => {
                    self.timer.reset(first.max(Duration::from_nanos(1)), period)
                }
                None => self.timer.clear(),
            };
            armed.map_err(|e| PersistError::Backend {
                device: <Pit as Persist>::NAME,
                what: "arm channel 0's timer",
                error: e.into(),
            })?;
            self.channels = channels;
            self.speaker_data = state.speaker_data;
            self.timer_failed = false;
            Ok(())
        }
    }

    impl Persist for Pit {
        const NAME: &'static str = "pit";
        const STATE_VERSION: u16 = 1;
        type State = PitState;

        fn save(&self) -> PitState {
            self.save_at(Instant::now())
        }

        fn restore(&mut self, state: PitState) -> Result<(), PersistError> {
            self.restore_at(state, Instant::now())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::super::tests::{at, load, pit, read_word};
        use super::*;
        use crate::persist::test_util::{round_trip, Clocked, Frozen};
        use crate::persist::Versioned;

        impl Clocked for Pit {
            fn save_at(&self, now: Instant) -> PitState {
                Pit::save_at(self, now)
            }
            fn restore_at(&mut self, state: PitState, now: Instant) -> Result<(), PersistError> {
                Pit::restore_at(self, state, now)
            }
        }

        /// A PIT in the middle of things at `t0` + 300 ticks: channel 0 periodic, channel 1
        /// with a latched count half read, channel 2 paused by its gate with a status latched
        /// and the LSB of a new word written.
        fn busy(t0: Instant) -> Pit {
            let (mut p, _) = pit();
            load(&mut p, 0, 2, 1000, t0);
            load(&mut p, 1, 3, 0x1234, t0);
            p.write_control(0x40, at(t0, 100));
            p.read_counter(1, at(t0, 200));
            p.write_speaker(0x03, t0);
            load(&mut p, 2, 0, 5000, t0);
            p.write_speaker(0x02, at(t0, 250));
            p.write_control(0xe8, at(t0, 260));
            p.write_counter(2, 0x10, at(t0, 270));
            p
        }

        #[test]
        fn round_trip_keeps_every_counter() {
            let t0 = Instant::now();
            let now = at(t0, 300);
            let (fresh, _) = pit();
            let state = round_trip(&Frozen(busy(t0), now), &mut Frozen(fresh, now));
            let [c0, c1, c2] = &state.channels[..] else {
                panic!("{state:?}")
            };
            assert_eq!(c0.counting_ns, Some(ticks_duration(300).as_nanos() as u64));
            assert_eq!((c1.latch, c1.latch_msb_next), (Some(0x1234 - 200), true));
            assert_eq!((c2.counting_ns, c2.paused_ticks), (None, 250));
            assert_eq!(
                (c2.lsb_written, c2.status_latch.is_some()),
                (Some(0x10), true)
            );
            assert!(state.speaker_data);
        }

        #[test]
        fn counts_go_on_from_where_they_were() {
            let t0 = Instant::now();
            let mut p = busy(t0);
            let state = p.save_at(at(t0, 300));
            // Restored a second later, in another process's time.
            let t1 = t0 + Duration::from_secs(1);
            let (mut fresh, _) = pit();
            fresh.restore_at(state, t1).unwrap();
            assert_eq!(read_word(&mut fresh, 0, at(t1, 200)), 500);
            assert_eq!(read_word(&mut p, 0, at(t0, 500)), 500);
            // The half-read latch gives its MSB, then the live count.
            assert_eq!(fresh.read_counter(1, t1), p.read_counter(1, at(t0, 300)));
            // Channel 2 gets the MSB of its new word (count 16): the status latched before comes
            // first, and the count waits for the gate.
            fresh.write_counter(2, 0x00, t1);
            p.write_counter(2, 0x00, at(t0, 300));
            assert_eq!(
                fresh.read_counter(2, t1),
                p.read_counter(2, at(t0, 300)),
                "status"
            );
            fresh.write_speaker(0x03, t1);
            p.write_speaker(0x03, at(t0, 300));
            assert_eq!(read_word(&mut fresh, 2, at(t1, 100)), 0xffff - 83);
            assert_eq!(read_word(&mut p, 2, at(t0, 400)), 0xffff - 83);
            // Channel 0's timer is armed for its next edge.
            assert!(fresh.timer.is_armed().unwrap());
            assert_eq!(
                fresh.channels[0].next_edge(t1).map(|(_, period)| period),
                Some(Some(ticks_duration(1000).max(MIN_IRQ_PERIOD)))
            );
        }

        #[test]
        fn a_restored_channel0_raises_irq0() {
            let (mut p, _) = pit();
            load(&mut p, 0, 2, 2, Instant::now());
            let (mut fresh, irq) = pit();
            assert!(!fresh.timer.is_armed().unwrap());
            fresh.restore_versioned(p.save_versioned()).unwrap();
            std::thread::sleep(Duration::from_millis(3));
            fresh.tick();
            assert_eq!(irq.read().unwrap(), 1);
            // A state with channel 0 stopped disarms the timer.
            let (stopped, _) = pit();
            fresh.restore_versioned(stopped.save_versioned()).unwrap();
            assert!(!fresh.timer.is_armed().unwrap());
        }

        #[test]
        fn states_that_do_not_fit_are_refused_and_change_nothing() {
            let t0 = Instant::now();
            let good = busy(t0).save_at(at(t0, 300));
            let (mut fresh, _) = pit();
            load(&mut fresh, 0, 2, 7, t0);
            let before = fresh.save_at(t0);
            let mut bad = Vec::new();
            let mut s = good.clone();
            s.channels.pop();
            bad.push((s, "2 channels, the PIT has 3"));
            let mut s = good.clone();
            s.channels[1].mode = 6;
            bad.push((s, "channel 1: mode 6 (0 to 5)"));
            let mut s = good.clone();
            s.channels[0].access = 0;
            bad.push((s, "channel 0: access mode 0 (1 to 3)"));
            let mut s = good.clone();
            s.channels[0].count = Some(0);
            bad.push((s, "channel 0: count 0 (1 to 65536)"));
            let mut s = good;
            s.channels[2].bcd = true;
            s.channels[2].count = Some(10_001);
            bad.push((s, "channel 2: count 10001 (1 to 10000)"));
            for (state, why) in bad {
                let err = fresh
                    .restore_versioned(Versioned { version: 1, state })
                    .unwrap_err();
                assert_eq!(
                    err.to_string(),
                    format!("pit: saved state does not fit: {why}")
                );
                assert_eq!(fresh.save_at(t0), before);
            }
            assert!(fresh.timer.is_armed().unwrap());
        }

        /// Channels 0 and 1 have their gates wired high (only channel 2's is on port 0x61): a
        /// state with one low could never be changed by the guest, and channel 0 would never
        /// count again (no timer interrupt).
        #[test]
        fn a_low_gate_on_channel_0_or_1_is_refused() {
            let t0 = Instant::now();
            let (p, _) = pit();
            for ch in [0, 1] {
                let mut state = p.save_at(t0);
                state.channels[ch].gate = false;
                let (mut fresh, _) = pit();
                let err = fresh.restore_at(state, t0);
                assert!(
                    matches!(err, Err(PersistError::Mismatch { .. })),
                    "channel {ch}: {err:?}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = PIT_FREQ_HZ / 1000;

    pub(super) fn pit() -> (Pit, EventFd) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let pit = Pit::new(irq.try_clone().unwrap()).unwrap();
        let pit = Arc::try_unwrap(pit).ok().unwrap().into_inner().unwrap();
        (pit, irq)
    }

    pub(super) fn at(base: Instant, ticks: u64) -> Instant {
        base + ticks_duration(ticks)
    }

    pub(super) fn load(pit: &mut Pit, channel: usize, mode: u8, count: u16, now: Instant) {
        pit.write_control(((channel as u8) << 6) | 0x30 | (mode << 1), now);
        let [lsb, msb] = count.to_le_bytes();
        pit.write_counter(channel, lsb, now);
        pit.write_counter(channel, msb, now);
    }

    pub(super) fn read_word(pit: &mut Pit, channel: usize, now: Instant) -> u16 {
        u16::from_le_bytes([
            pit.read_counter(channel, now),
            pit.read_counter(channel, now),
        ])
    }

    #[test]
    fn mode0_counts_down_and_raises_out_at_terminal_count() {
        let (mut pit, _) = pit();
        let t0 = Instant::now();
        pit.write_speaker(0x01, t0);
        load(&mut pit, 2, 0, 1000, t0);
        assert_eq!(read_word(&mut pit, 2, at(t0, 0)), 1000);
        assert_eq!(read_word(&mut pit, 2, at(t0, 400)), 600);
        assert_eq!(pit.read_speaker(at(t0, 999)) & 0x21, 0x01, "OUT2 low");
        assert_eq!(pit.read_speaker(at(t0, 1000)) & 0x21, 0x21, "OUT2 high");
        // After terminal count the counter wraps through 0xffff and OUT stays high.
        assert_eq!(read_word(&mut pit, 2, at(t0, 1001)), 0xffff);
        assert_eq!(pit.read_speaker(at(t0, 5000)) & 0x20, 0x20);
    }

    #[test]
    fn gate_low_pauses_mode0_on_channel2() {
        let (mut pit, _) = pit();
        let t0 = Instant::now();
        load(&mut pit, 2, 0, 1000, t0);
        // Gate low from the start: nothing counts.
        assert_eq!(read_word(&mut pit, 2, at(t0, 500)), 1000);
        pit.write_speaker(0x01, at(t0, 500));
        assert_eq!(read_word(&mut pit, 2, at(t0, 700)), 800);
        pit.write_speaker(0x00, at(t0, 700));
        assert_eq!(read_word(&mut pit, 2, at(t0, 5000)), 800);
        pit.write_speaker(0x01, at(t0, 5000));
        assert_eq!(read_word(&mut pit, 2, at(t0, 5100)), 700);
    }

    #[test]
    fn periodic_modes_reload() {
        let (mut pit, _) = pit();
        let t0 = Instant::now();
        load(&mut pit, 0, 2, 100, t0);
        assert_eq!(read_word(&mut pit, 0, at(t0, 0)), 100);
        assert_eq!(read_word(&mut pit, 0, at(t0, 99)), 1);
        assert_eq!(read_word(&mut pit, 0, at(t0, 100)), 100);
        assert_eq!(read_word(&mut pit, 0, at(t0, 250)), 50);
        assert!(!pit.channels[0].out(at(t0, 199)));
        assert!(pit.channels[0].out(at(t0, 200)));
        // Mode 3 counts by two; OUT is high for the first half of each period.
        load(&mut pit, 0, 3, 100, t0);
        assert_eq!(read_word(&mut pit, 0, at(t0, 10)), 80);
        assert!(pit.channels[0].out(at(t0, 49)));
        assert!(!pit.channels[0].out(at(t0, 50)));
        assert!(pit.channels[0].out(at(t0, 100)));
        // Control words 6 and 7 are modes 2 and 3.
        pit.write_control(0x3c, t0);
        assert_eq!(pit.channels[0].mode, 2);
        pit.write_control(0x3e, t0);
        assert_eq!(pit.channels[0].mode, 3);
    }

    #[test]
    fn count_zero_is_65536_and_bcd_10000() {
        let (mut pit, _) = pit();
        let t0 = Instant::now();
        load(&mut pit, 0, 0, 0, t0);
        assert_eq!(read_word(&mut pit, 0, at(t0, 1)), 0xffff);
        assert_eq!(
            pit.channels[0].next_edge(t0).unwrap().0,
            ticks_duration(0x1_0000)
        );
        // BCD: a count of 0x1234 is 1234 decimal, read back in BCD.
        pit.write_control(0x31, t0);
        pit.write_counter(0, 0x34, t0);
        pit.write_counter(0, 0x12, t0);
        assert_eq!(read_word(&mut pit, 0, at(t0, 34)), 0x1200);
        pit.write_control(0x31, t0);
        pit.write_counter(0, 0, t0);
        pit.write_counter(0, 0, t0);
        assert_eq!(read_word(&mut pit, 0, at(t0, 1)), 0x9999);
    }

    #[test]
    fn access_modes_and_latches() {
        let (mut pit, _) = pit();
        let t0 = Instant::now();
        // LSB only.
        pit.write_control(0x10, t0);
        pit.write_counter(0, 200, t0);
        assert_eq!(pit.read_counter(0, at(t0, 50)), 150);
        // MSB only: count 0x0200.
        pit.write_control(0x20, t0);
        pit.write_counter(0, 2, t0);
        assert_eq!(pit.read_counter(0, at(t0, 0x100)), 1);
        // A latched word holds its value across reads and time; a second latch before the first is
        // read changes nothing.
        load(&mut pit, 0, 2, 1000, t0);
        pit.write_control(0x00, at(t0, 300));
        pit.write_control(0x00, at(t0, 600));
        assert_eq!(read_word(&mut pit, 0, at(t0, 900)), 700);
        assert_eq!(read_word(&mut pit, 0, at(t0, 900)), 100);
        // Read-back: status then count of channel 0.
        pit.write_control(0xc2, at(t0, 100));
        let status = pit.read_counter(0, at(t0, 900));
        assert_eq!(
            status,
            0x80 | 0x30 | (2 << 1),
            "OUT high, word access, mode 2"
        );
        assert_eq!(read_word(&mut pit, 0, at(t0, 900)), 900);
        // Status of a counter programmed but without a count: null count set, OUT low in mode 0.
        pit.write_control(0x80 | 0x30, t0);
        pit.write_control(0xe8, t0);
        assert_eq!(pit.read_counter(2, t0), 0x70);
        // The word-read flip-flop.
        load(&mut pit, 1, 2, 0x1234, t0);
        assert_eq!(pit.read_counter(1, t0), 0x34);
        assert_eq!(pit.read_counter(1, t0), 0x12);
    }

    #[test]
    fn modes_1_and_5_wait_for_the_gate() {
        let (mut pit, _) = pit();
        let t0 = Instant::now();
        load(&mut pit, 2, 1, 100, t0);
        assert_eq!(
            pit.read_speaker(at(t0, 500)) & 0x20,
            0x20,
            "OUT high before trigger"
        );
        pit.write_speaker(0x01, at(t0, 500));
        assert_eq!(pit.read_speaker(at(t0, 550)) & 0x20, 0);
        assert_eq!(read_word(&mut pit, 2, at(t0, 550)), 50);
        assert_eq!(pit.read_speaker(at(t0, 600)) & 0x20, 0x20);
        // Retriggered by a new rising edge.
        pit.write_speaker(0x00, at(t0, 700));
        pit.write_speaker(0x01, at(t0, 700));
        assert_eq!(read_word(&mut pit, 2, at(t0, 710)), 90);
        // Mode 5: a strobe one tick long at terminal count.
        load(&mut pit, 2, 5, 10, at(t0, 800));
        pit.write_speaker(0x00, at(t0, 800));
        pit.write_speaker(0x01, at(t0, 800));
        assert!(pit.channels[2].out(at(t0, 809)));
        assert!(!pit.channels[2].out(at(t0, 810)));
        assert!(pit.channels[2].out(at(t0, 811)));
    }

    #[test]
    fn channel0_edges_arm_the_timer() {
        let (mut pit, _) = pit();
        let t0 = Instant::now();
        // Mode 0: one edge at terminal count.
        load(&mut pit, 0, 0, (5 * MS) as u16, t0);
        let (first, period) = pit.channels[0].next_edge(t0).unwrap();
        assert_eq!(period, None);
        assert!(first > Duration::from_micros(4990) && first < Duration::from_micros(5010));
        assert!(pit.timer.is_armed().unwrap());
        // Past terminal count nothing more is due.
        assert!(pit.channels[0].next_edge(at(t0, 5 * MS + 1)).is_none());
        // Mode 2 at 1 kHz: periodic.
        load(&mut pit, 0, 2, MS as u16, t0);
        let (_, period) = pit.channels[0].next_edge(t0).unwrap();
        assert_eq!(period, Some(ticks_duration(MS)));
        // A tiny period is bounded.
        load(&mut pit, 0, 2, 2, t0);
        let (first, period) = pit.channels[0].next_edge(t0).unwrap();
        assert_eq!((first, period), (MIN_IRQ_PERIOD, Some(MIN_IRQ_PERIOD)));
        // A control word stops channel 0 and its timer.
        pit.write_control(0x34, t0);
        assert!(pit.channels[0].next_edge(t0).is_none());
        assert!(!pit.timer.is_armed().unwrap());
        // So does the first byte of a new mode-0 word.
        load(&mut pit, 0, 0, 1000, t0);
        pit.write_counter(0, 0xff, t0);
        assert!(!pit.timer.is_armed().unwrap());
        // The longest count (55 ms from t0), so that a slow machine checks before it expires.
        pit.write_counter(0, 0xff, t0);
        assert!(pit.timer.is_armed().unwrap());
    }

    #[test]
    fn timer_expiry_raises_irq0_once() {
        let (mut pit, irq) = pit();
        let t0 = Instant::now();
        load(&mut pit, 0, 2, 2, t0);
        std::thread::sleep(Duration::from_millis(3));
        pit.tick();
        assert_eq!(
            irq.read().unwrap(),
            1,
            "several periods passed, one interrupt"
        );
        // Nothing pending: no interrupt, no blocking.
        pit.write_control(0x34, t0);
        pit.tick();
        assert!(irq.read().is_err());
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let pit = Pit::new(irq).unwrap();
        let (mut ports, mut speaker) = Pit::port_devices(&pit);
        // Every control word, every port, every width.
        for word in 0..=255u8 {
            ports.write(CONTROL, &[word]);
            for off in 0..4 {
                let mut b = [0u8; 4];
                ports.read(off, &mut b);
                ports.write(off, &[word, word]);
            }
        }
        ports.write(7, &[1]);
        ports.read(u64::MAX, &mut [0; 2]);
        let mut b = [0xffu8; 2];
        speaker.read(0, &mut b);
        assert_eq!(b[1], 0);
        speaker.write(0, &[]);
        speaker.write(0, &[0xff, 0xff]);
        speaker.read(0, &mut []);
    }

    #[test]
    fn bcd_conversions() {
        assert_eq!(from_bcd(0x9999), 9999);
        assert_eq!(from_bcd(0xffff), 9999, "invalid digits clamp");
        assert_eq!(to_bcd(1234), 0x1234);
        assert_eq!(to_bcd(10_000), 0);
    }
}

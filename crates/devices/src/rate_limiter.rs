//! Token-bucket rate limiting for the virtio devices: bytes per second and operations per
//! second, each with a burst.
//!
//! A bucket holds at most `capacity` tokens (the burst) and gains `rate` tokens per second. An
//! operation that costs `n` tokens may start when the bucket holds at least `min(n, capacity)`
//! tokens, and then takes all `n`: the bucket may go negative (it borrows from the future). So a
//! request larger than the whole bucket (a 1 MiB read against a 256 KiB burst) starts as soon as
//! the bucket is full instead of waiting forever, and the long-run rate is still exactly `rate`:
//! the debt is paid back by refilling before anything else starts.
//!
//! [`Buckets`] is the pure logic, driven by the caller's clock (tests use made-up instants).
//! [`RateLimiter`] adds the clock and a `timerfd`: when an operation must wait the limiter arms
//! the timer for exactly that long, the device stops taking work from the guest (it leaves the
//! request in the ring, or stops reading its tap), and the event loop resumes it when the timer
//! fires. Nothing polls or spins, and nothing the guest asked for fails: it only waits.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use log::warn;
use vmm_sys_util::timerfd::TimerFd;

use crate::seccomp::{SyscallRule, Syscalls};
use crate::Error;

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// The burst used when none is given: this long's worth of the rate. Short enough that a long
/// transfer measures within about a percent of the limit (the first burst goes at once), long
/// enough that the timer fires at most about ten times a second per busy device.
pub const DEFAULT_BURST: Duration = Duration::from_millis(100);

/// One bucket's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BucketConfig {
    /// Tokens (bytes or operations) per second; at least 1.
    pub rate: u64,
    /// The bucket's size, the most that can go at once after a pause; `None`:
    /// [`DEFAULT_BURST`]'s worth of the rate (at least 1).
    pub burst: Option<u64>,
}

impl BucketConfig {
    /// A bucket of `rate` per second with the default burst.
    pub fn new(rate: u64) -> Self {
        BucketConfig { rate, burst: None }
    }

    /// The bucket's size in tokens.
    pub fn capacity(&self) -> u64 {
        self.burst
            .unwrap_or_else(|| {
                let per_burst =
                    u128::from(self.rate) * DEFAULT_BURST.as_nanos() / NANOS_PER_SEC as u128;
                u64::try_from(per_burst).unwrap_or(u64::MAX)
            })
            .max(1)
    }
}

/// The limits of one device (or one direction of a NIC): either, both or neither bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RateLimitConfig {
    /// Bytes per second.
    pub bytes: Option<BucketConfig>,
    /// Operations per second (requests for a disk, frames for a NIC).
    pub ops: Option<BucketConfig>,
}

impl RateLimitConfig {
    /// Whether no limit is set.
    pub fn is_unlimited(&self) -> bool {
        self.bytes.is_none() && self.ops.is_none()
    }
}

/// One token bucket. Tokens are counted in billionths so that refilling by the nanosecond is
/// exact in integers.
#[derive(Debug, Clone)]
struct Bucket {
    rate: u64,
    capacity: u64,
    /// Tokens × 10⁹; negative while a large operation's debt is being paid back.
    nano_tokens: i128,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    fn new(config: &BucketConfig, now: Instant) -> Self {
        let capacity = config.capacity();
        Bucket {
            rate: config.rate.max(1),
            capacity,
            nano_tokens: i128::from(capacity) * NANOS_PER_SEC,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        // A clock that went backwards (it cannot with Instant, but a caller may pass an older
        // instant) refills nothing.
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        if elapsed == 0 {
            return;
        }
        self.last = now;
        let full = i128::from(self.capacity) * NANOS_PER_SEC;
        let gained = i128::try_from(elapsed)
            .unwrap_or(i128::MAX)
            .saturating_mul(i128::from(self.rate));
        self.nano_tokens = self.nano_tokens.saturating_add(gained).min(full);
    }

    /// How long until an operation of `cost` tokens may start (zero: now).
    fn wait_for(&self, cost: u64) -> Duration {
        let need = i128::from(cost.min(self.capacity)) * NANOS_PER_SEC;
        if self.nano_tokens >= need {
            return Duration::ZERO;
        }
        let missing = need - self.nano_tokens;
        let rate = i128::from(self.rate);
        // Rounded up, so that the bucket really holds `need` when the timer fires.
        let nanos = (missing + rate - 1) / rate;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    fn take(&mut self, cost: u64) {
        self.nano_tokens = self
            .nano_tokens
            .saturating_sub(i128::from(cost) * NANOS_PER_SEC);
    }

    /// Whole tokens in the bucket now (negative while in debt).
    fn tokens(&self) -> i64 {
        i64::try_from(self.nano_tokens / NANOS_PER_SEC).unwrap_or(i64::MIN)
    }
}

/// The two buckets of a limiter, driven by the caller's clock. No I/O: this is the part the unit
/// tests exercise.
#[derive(Debug, Clone)]
pub struct Buckets {
    bytes: Option<Bucket>,
    ops: Option<Bucket>,
}

impl Buckets {
    /// Full buckets at `now`.
    pub fn new(config: &RateLimitConfig, now: Instant) -> Self {
        Buckets {
            bytes: config.bytes.as_ref().map(|c| Bucket::new(c, now)),
            ops: config.ops.as_ref().map(|c| Bucket::new(c, now)),
        }
    }

    fn each(&mut self) -> impl Iterator<Item = &mut Bucket> {
        self.bytes.iter_mut().chain(self.ops.iter_mut())
    }

    /// Takes `bytes` and `ops` tokens if both buckets allow it now; otherwise takes nothing and
    /// says how long until they would.
    pub fn consume(&mut self, now: Instant, bytes: u64, ops: u64) -> Result<(), Duration> {
        self.each().for_each(|b| b.refill(now));
        let wait = [(&self.bytes, bytes), (&self.ops, ops)]
            .into_iter()
            .filter_map(|(bucket, cost)| bucket.as_ref().map(|b| b.wait_for(cost)))
            .max()
            .unwrap_or(Duration::ZERO);
        if !wait.is_zero() {
            return Err(wait);
        }
        self.charge(now, bytes, ops);
        Ok(())
    }

    /// Whether an operation of still unknown size may start now: every bucket holds at least one
    /// token. Otherwise, how long until it would. Follow with [`Buckets::charge`] once the size
    /// is known (a frame read from a tap).
    pub fn ready(&mut self, now: Instant) -> Result<(), Duration> {
        self.each().for_each(|b| b.refill(now));
        let wait = self
            .bytes
            .iter()
            .chain(self.ops.iter())
            .map(|b| b.wait_for(1))
            .max()
            .unwrap_or(Duration::ZERO);
        if wait.is_zero() {
            Ok(())
        } else {
            Err(wait)
        }
    }

    /// Takes `bytes` and `ops` tokens unconditionally (the buckets may go negative).
    pub fn charge(&mut self, now: Instant, bytes: u64, ops: u64) {
        self.each().for_each(|b| b.refill(now));
        if let Some(b) = &mut self.bytes {
            b.take(bytes);
        }
        if let Some(b) = &mut self.ops {
            b.take(ops);
        }
    }

    /// Whole tokens left as of the last update: (bytes, ops), `None` for an absent bucket.
    pub fn tokens(&self) -> (Option<i64>, Option<i64>) {
        (
            self.bytes.as_ref().map(Bucket::tokens),
            self.ops.as_ref().map(Bucket::tokens),
        )
    }
}

/// A device's rate limiter: [`Buckets`] on the monotonic clock, and a timer the device registers
/// on its event-loop subscriber to learn when a throttled operation may go.
pub struct RateLimiter {
    buckets: Buckets,
    timer: TimerFd,
    /// Times an operation had to wait.
    throttled: u64,
    /// Arming the timer failed once: the limiter lets everything through rather than stall.
    broken: bool,
}

impl RateLimiter {
    /// A limiter with full buckets and a disarmed, non-blocking timer.
    pub fn new(config: &RateLimitConfig) -> Result<Self, Error> {
        let timer = crate::nonblocking_timer("rate limiter")?;
        Ok(RateLimiter {
            buckets: Buckets::new(config, Instant::now()),
            timer,
            throttled: 0,
            broken: false,
        })
    }

    /// Takes the tokens for an operation of `bytes` bytes if the buckets allow it now. If not,
    /// arms the timer for when they will and returns false: the caller leaves the operation where
    /// it is and tries again when the timer fires ([`RateLimiter::timer_fired`]).
    pub fn try_consume(&mut self, bytes: u64, ops: u64) -> bool {
        match self.buckets.consume(Instant::now(), bytes, ops) {
            Ok(()) => true,
            Err(wait) => self.wait(wait),
        }
    }

    /// Whether an operation of unknown size may start now (see [`Buckets::ready`]); if not, arms
    /// the timer and returns false. Charge it with [`RateLimiter::charge`] once its size is known.
    pub fn try_ready(&mut self) -> bool {
        match self.buckets.ready(Instant::now()) {
            Ok(()) => true,
            Err(wait) => self.wait(wait),
        }
    }

    /// Takes tokens for an operation already done (the buckets may go negative).
    pub fn charge(&mut self, bytes: u64, ops: u64) {
        self.buckets.charge(Instant::now(), bytes, ops);
    }

    fn wait(&mut self, wait: Duration) -> bool {
        if self.broken {
            return true;
        }
        self.throttled += 1;
        // A zero duration would disarm the timer.
        match self.timer.reset(wait.max(Duration::from_nanos(1)), None) {
            Ok(()) => false,
            Err(e) => {
                warn!("cannot arm the rate-limit timer: {e}; the device is no longer rate limited");
                self.broken = true;
                true
            }
        }
    }

    /// Acknowledges the timer's expiry; call when the event loop reports the timer fd readable.
    pub fn timer_fired(&mut self) {
        // Non-blocking: an error only means the expiry was already consumed (re-armed since).
        let _ = self.timer.wait();
    }

    /// The timer's descriptor, to watch for input on the event loop.
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// How many times an operation had to wait so far.
    pub fn throttled_count(&self) -> u64 {
        self.throttled
    }

    /// The buckets' state, for tests and logs.
    pub fn buckets(&self) -> &Buckets {
        &self.buckets
    }
}

impl AsRawFd for RateLimiter {
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

/// A rate limiter's system calls, all on the event loop (it throttles queue work): its timerfd is
/// armed when a bucket runs dry, read when it expires.
pub const SYSCALLS: Syscalls = Syscalls {
    name: "rate limiter",
    vcpu: &[],
    event_loop: &[
        SyscallRule::Any(libc::SYS_timerfd_settime),
        SyscallRule::Any(libc::SYS_read),
        SyscallRule::Any(libc::SYS_clock_gettime),
    ],
};

pub use persist::{BucketState, RateLimiterState};

/// Saving and restoring the buckets' tokens.
mod persist {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::persist::{Persist, PersistError};

    /// One bucket as of the moment of saving: the refill up to that moment is included, so no
    /// time is saved and a restored bucket refills from the moment it is restored.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct BucketState {
        /// Tokens per second (checked against the restoring device's configuration).
        pub rate: u64,
        /// The bucket's size in tokens (checked likewise).
        pub capacity: u64,
        /// Tokens × 10⁹ in the bucket; negative while in debt.
        pub nano_tokens: i128,
    }

    /// A limiter's buckets. Not saved: the timer (restoring re-arms it if the buckets are
    /// empty, so a device that was waiting tries again) and the throttling count.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RateLimiterState {
        /// The bytes bucket, if the device has one.
        pub bytes: Option<BucketState>,
        /// The operations bucket, if the device has one.
        pub ops: Option<BucketState>,
    }

    fn save_bucket(bucket: &Option<Bucket>, now: Instant) -> Option<BucketState> {
        bucket.as_ref().map(|b| {
            let mut b = b.clone();
            b.refill(now);
            BucketState {
                rate: b.rate,
                capacity: b.capacity,
                nano_tokens: b.nano_tokens,
            }
        })
    }

    fn restore_bucket(
        bucket: &mut Option<Bucket>,
        state: Option<BucketState>,
        what: &str,
        now: Instant,
    ) -> Result<(), String> {
        match (bucket.as_mut(), state) {
            (None, None) => Ok(()),
            (Some(b), Some(s)) => {
                if (s.rate, s.capacity) != (b.rate, b.capacity) {
                    return Err(format!(
                        "{what} bucket of {}/s and {} tokens, this device has {}/s and {}",
                        s.rate, s.capacity, b.rate, b.capacity
                    ));
                }
                if s.nano_tokens > i128::from(b.capacity) * NANOS_PER_SEC {
                    return Err(format!(
                        "{what} bucket holds {} nano-tokens, more than its {} tokens",
                        s.nano_tokens, b.capacity
                    ));
                }
                // A bucket is charged only when it holds a token (or the operation's whole
                // cost), so no debt exceeds one operation's cost: at most u64::MAX tokens.
                if s.nano_tokens < -i128::from(u64::MAX) * NANOS_PER_SEC {
                    return Err(format!(
                        "{what} bucket owes {} nano-tokens, more than any operation costs",
                        s.nano_tokens.unsigned_abs()
                    ));
                }
                b.nano_tokens = s.nano_tokens;
                b.last = now;
                Ok(())
            }
            (Some(_), None) => Err(format!("no {what} bucket saved, this device has one")),
            (None, Some(_)) => Err(format!("a {what} bucket saved, this device has none")),
        }
    }

    impl Buckets {
        /// The buckets as of `now`.
        pub(super) fn save_at(&self, now: Instant) -> RateLimiterState {
            RateLimiterState {
                bytes: save_bucket(&self.bytes, now),
                ops: save_bucket(&self.ops, now),
            }
        }

        /// The buckets of `state`, refilling from `now`, if they have this configuration.
        pub(super) fn restored(
            &self,
            state: RateLimiterState,
            now: Instant,
        ) -> Result<Buckets, String> {
            let mut new = self.clone();
            restore_bucket(&mut new.bytes, state.bytes, "bytes", now)?;
            restore_bucket(&mut new.ops, state.ops, "ops", now)?;
            Ok(new)
        }
    }

    impl RateLimiter {
        pub(super) fn restore_at(
            &mut self,
            state: RateLimiterState,
            now: Instant,
        ) -> Result<(), PersistError> {
            let mut buckets =
                self.buckets
                    .restored(state, now)
                    .map_err(|why| PersistError::Mismatch {
                        device: <Self as Persist>::NAME,
                        why,
                    })?;
            // A device that was waiting for tokens does not know its timer is gone: arm it for
            // when the buckets hold a token again, and the device tries again then.
            let armed = match buckets.ready(now) {
                Ok(()) => self.timer.clear(),
                Err(wait) => self.timer.reset(wait.max(Duration::from_nanos(1)), None),
            };
            armed.map_err(|e| PersistError::Backend {
                device: <Self as Persist>::NAME,
                what: "arm the rate-limit timer",
                error: e.into(),
            })?;
            self.buckets = buckets;
            Ok(())
        }
    }

    impl Persist for RateLimiter {
        const NAME: &'static str = "rate-limiter";
        const STATE_VERSION: u16 = 1;
        type State = RateLimiterState;

        fn save(&self) -> RateLimiterState {
            self.buckets.save_at(Instant::now())
        }

        fn restore(&mut self, state: RateLimiterState) -> Result<(), PersistError> {
            self.restore_at(state, Instant::now())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::super::tests::limits;
        use super::*;
        use crate::persist::test_util::{round_trip, Clocked, Frozen};
        use crate::persist::Versioned;

        const MS: Duration = Duration::from_millis(1);

        impl Clocked for RateLimiter {
            fn save_at(&self, now: Instant) -> RateLimiterState {
                self.buckets.save_at(now)
            }
            fn restore_at(
                &mut self,
                state: RateLimiterState,
                now: Instant,
            ) -> Result<(), PersistError> {
                RateLimiter::restore_at(self, state, now)
            }
        }

        #[test]
        fn round_trip_keeps_the_tokens_and_the_debt() {
            let cfg = limits(Some((1000, 500)), Some((10, 5)));
            let t0 = Instant::now();
            let mut l = RateLimiter::new(&cfg).unwrap();
            l.buckets = Buckets::new(&cfg, t0);
            // 2000 bytes against a 500-byte bucket: 1500 in debt; 3 of 5 ops left.
            l.buckets.charge(t0, 2000, 2);
            let fresh = RateLimiter::new(&cfg).unwrap();
            let state = round_trip(&Frozen(l, t0), &mut Frozen(fresh, t0));
            assert_eq!(state.bytes.unwrap().nano_tokens, -1500 * NANOS_PER_SEC);
            assert_eq!(state.ops.unwrap().nano_tokens, 3 * NANOS_PER_SEC);
        }

        #[test]
        fn a_restored_limiter_refills_from_the_restore_and_waits_the_same() {
            let cfg = limits(None, Some((1000, 1)));
            let t0 = Instant::now();
            let mut b = Buckets::new(&cfg, t0);
            assert_eq!(b.consume(t0, 0, 1), Ok(()));
            // Saved 0.4 ms later: 0.4 of a token; restored "later" in another process.
            let state = b.save_at(t0 + MS * 2 / 5);
            let t1 = t0 + Duration::from_secs(5);
            let mut fresh = RateLimiter::new(&cfg).unwrap();
            fresh.restore_at(state, t1).unwrap();
            assert_eq!(
                fresh.buckets.consume(t1, 0, 1),
                Err(Duration::from_micros(600))
            );
            assert_eq!(fresh.buckets.consume(t1 + MS * 3 / 5, 0, 1), Ok(()));
            // The buckets were empty: the timer was armed so the device tries again.
            assert!(fresh.timer.is_armed().unwrap());
            // Full buckets leave it disarmed.
            let mut full = RateLimiter::new(&cfg).unwrap();
            full.restore_versioned(RateLimiter::new(&cfg).unwrap().save_versioned())
                .unwrap();
            assert!(!full.timer.is_armed().unwrap());
            assert!(full.try_consume(0, 1));
        }

        #[test]
        fn another_configuration_is_refused_and_changes_nothing() {
            let cfg = limits(Some((1000, 500)), None);
            let mut l = RateLimiter::new(&cfg).unwrap();
            assert!(l.try_consume(100, 0));
            let before = l.buckets.tokens();
            let mut bad = Vec::new();
            let other = |c| RateLimiter::new(&c).unwrap().save();
            bad.push((
                other(limits(Some((2000, 500)), None)),
                "bytes bucket of 2000/s and 500 tokens, this device has 1000/s and 500",
            ));
            bad.push((
                other(limits(None, None)),
                "no bytes bucket saved, this device has one",
            ));
            bad.push((
                other(limits(Some((1000, 500)), Some((1, 1)))),
                "a ops bucket saved, this device has none",
            ));
            let mut over = l.save();
            if let Some(b) = over.bytes.as_mut() {
                b.nano_tokens = 501 * NANOS_PER_SEC;
            }
            bad.push((
                over,
                "bytes bucket holds 501000000000 nano-tokens, more than its 500 tokens",
            ));
            for (state, why) in bad {
                let err = l
                    .restore_versioned(Versioned { version: 1, state })
                    .unwrap_err();
                assert_eq!(
                    err.to_string(),
                    format!("rate-limiter: saved state does not fit: {why}")
                );
            }
            assert_eq!(l.buckets.tokens(), before);
        }

        /// No bucket can owe more than one operation's cost (at most `u64::MAX` tokens): a
        /// file claiming a deeper debt is refused, not left to overflow the wait computation
        /// (a panic with overflow checks, a device stalled for centuries without).
        #[test]
        fn a_debt_no_operation_could_leave_is_refused() {
            let cfg = limits(Some((1000, 500)), None);
            let mut l = RateLimiter::new(&cfg).unwrap();
            let before = l.buckets.tokens();
            let mut state = l.save();
            if let Some(b) = state.bytes.as_mut() {
                b.nano_tokens = i128::MIN;
            }
            let err = l
                .restore_versioned(Versioned { version: 1, state })
                .unwrap_err();
            assert!(matches!(err, PersistError::Mismatch { .. }), "{err}");
            assert_eq!(l.buckets.tokens(), before);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    pub(super) fn limits(bytes: Option<(u64, u64)>, ops: Option<(u64, u64)>) -> RateLimitConfig {
        let b = |(rate, burst)| BucketConfig {
            rate,
            burst: Some(burst),
        };
        RateLimitConfig {
            bytes: bytes.map(b),
            ops: ops.map(b),
        }
    }

    #[test]
    fn default_burst_is_100ms_of_rate_and_at_least_one() {
        assert_eq!(BucketConfig::new(50 << 20).capacity(), (50 << 20) / 10);
        assert_eq!(BucketConfig::new(1000).capacity(), 100);
        assert_eq!(BucketConfig::new(5).capacity(), 1);
        assert_eq!(BucketConfig::new(u64::MAX).capacity(), u64::MAX / 10);
        let c = BucketConfig {
            rate: 1000,
            burst: Some(7),
        };
        assert_eq!(c.capacity(), 7);
        assert!(RateLimitConfig::default().is_unlimited());
        assert!(!limits(None, Some((1, 1))).is_unlimited());
    }

    #[test]
    fn unlimited_always_passes() {
        let t0 = Instant::now();
        let mut b = Buckets::new(&RateLimitConfig::default(), t0);
        for _ in 0..1000 {
            assert_eq!(b.consume(t0, u64::MAX, u64::MAX), Ok(()));
        }
        assert_eq!(b.ready(t0), Ok(()));
        assert_eq!(b.tokens(), (None, None));
    }

    #[test]
    fn burst_then_refill_at_the_rate() {
        // 1000 bytes/s, bucket of 100.
        let t0 = Instant::now();
        let mut b = Buckets::new(&limits(Some((1000, 100)), None), t0);
        assert_eq!(b.consume(t0, 60, 1), Ok(()));
        assert_eq!(b.consume(t0, 40, 1), Ok(()));
        // Empty: 10 bytes take 10 ms.
        assert_eq!(b.consume(t0, 10, 1), Err(10 * MS));
        assert_eq!(b.consume(t0 + 5 * MS, 10, 1), Err(5 * MS));
        assert_eq!(b.consume(t0 + 10 * MS, 10, 1), Ok(()));
        // A long pause refills only up to the capacity.
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(b.consume(t1, 100, 1), Ok(()));
        assert_eq!(b.consume(t1, 1, 1), Err(MS));
    }

    #[test]
    fn fractional_refill_is_exact() {
        // 3 tokens per second: one token every 333.33… ms, no drift over many operations.
        let t0 = Instant::now();
        let mut b = Buckets::new(&limits(None, Some((3, 1))), t0);
        let mut now = t0;
        let mut done = 0u32;
        while done < 31 {
            match b.consume(now, 0, 1) {
                Ok(()) => done += 1,
                Err(wait) => now += wait,
            }
        }
        // The first goes at once, the next 30 take exactly 10 s (to the rounding of the waits).
        let took = now - t0;
        assert!(took >= Duration::from_secs(10), "{took:?}");
        assert!(
            took < Duration::from_secs(10) + 31 * Duration::from_nanos(1),
            "{took:?}"
        );
    }

    #[test]
    fn failed_consume_takes_nothing_from_either_bucket() {
        let t0 = Instant::now();
        let mut b = Buckets::new(&limits(Some((1000, 1000)), Some((10, 1))), t0);
        assert_eq!(b.consume(t0, 100, 1), Ok(()));
        assert_eq!(b.tokens(), (Some(900), Some(0)));
        // The ops bucket refuses: the bytes bucket must not be charged either.
        assert_eq!(b.consume(t0, 100, 1), Err(100 * MS));
        assert_eq!(b.tokens(), (Some(900), Some(0)));
        // The longer wait of the two wins.
        assert_eq!(b.consume(t0, 1900, 1), Err(Duration::from_millis(100)));
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(b.consume(t1, 950, 1), Ok(()));
        assert_eq!(b.tokens(), (Some(50), Some(0)));
    }

    #[test]
    fn request_larger_than_the_bucket_goes_when_full_and_borrows() {
        // 256 KiB bucket, 1 MiB/s; 1 MiB requests.
        let t0 = Instant::now();
        let mut b = Buckets::new(&limits(Some((1 << 20, 256 << 10)), None), t0);
        assert_eq!(b.consume(t0, 1 << 20, 1), Ok(()));
        assert_eq!(b.tokens().0, Some((256 << 10) - (1 << 20)));
        // Refilling to full takes the 768 KiB debt plus the 256 KiB bucket: 1 s.
        assert_eq!(b.consume(t0, 1 << 20, 1), Err(Duration::from_secs(1)));
        let mut now = t0;
        let mut sent = 1u64;
        while sent < 20 {
            match b.consume(now, 1 << 20, 1) {
                Ok(()) => sent += 1,
                Err(wait) => now += wait,
            }
        }
        // 20 MiB at 1 MiB/s: the first request free, then 19 × 1 s.
        assert_eq!(now - t0, Duration::from_secs(19));
    }

    #[test]
    fn long_run_rate_matches_the_limit() {
        // 8 MiB/s, default burst, 1 MiB and 4 KiB requests alternating: 64 MiB take 8 s less
        // the initial burst.
        let cfg = RateLimitConfig {
            bytes: Some(BucketConfig::new(8 << 20)),
            ops: None,
        };
        let t0 = Instant::now();
        let mut b = Buckets::new(&cfg, t0);
        let mut now = t0;
        let mut sent = 0u64;
        let mut big = true;
        while sent < 64 << 20 {
            let size = if big { 1 << 20 } else { 4096 };
            match b.consume(now, size, 1) {
                Ok(()) => {
                    sent += size;
                    big = !big;
                }
                Err(wait) => now += wait,
            }
        }
        let rate = sent as f64 / (now - t0).as_secs_f64();
        let limit = (8 << 20) as f64;
        assert!((rate / limit - 1.0).abs() < 0.03, "{rate} vs {limit}");
    }

    #[test]
    fn ready_then_charge_for_unknown_sizes() {
        // 1000 bytes/s, bucket 100; 64 KiB frames: one goes, then the debt is paid first.
        let t0 = Instant::now();
        let mut b = Buckets::new(&limits(Some((1000, 100)), None), t0);
        assert_eq!(b.ready(t0), Ok(()));
        b.charge(t0, 1100, 1);
        assert_eq!(b.tokens().0, Some(-1000));
        // Back to one token: 1001 ms.
        assert_eq!(b.ready(t0), Err(Duration::from_millis(1001)));
        assert_eq!(b.ready(t0 + Duration::from_millis(1001)), Ok(()));
    }

    #[test]
    fn older_instants_refill_nothing() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut b = Buckets::new(&limits(None, Some((10, 1))), t0);
        assert_eq!(b.consume(t0, 0, 1), Ok(()));
        let earlier = t0 - Duration::from_millis(500);
        assert_eq!(b.consume(earlier, 0, 1), Err(100 * MS));
        assert_eq!(b.tokens().1, Some(0));
    }

    #[test]
    fn huge_rates_and_costs_do_not_overflow() {
        let t0 = Instant::now();
        let mut b = Buckets::new(&limits(Some((u64::MAX, u64::MAX)), Some((u64::MAX, 1))), t0);
        assert_eq!(b.consume(t0, u64::MAX, 1), Ok(()));
        let later = t0 + Duration::from_secs(1 << 30);
        assert_eq!(b.consume(later, u64::MAX, u64::MAX), Ok(()));
        b.charge(later, u64::MAX, u64::MAX);
        // Deep in debt at 1 token/s: the wait saturates instead of wrapping.
        let mut slow = Buckets::new(&limits(Some((1, 1)), None), t0);
        slow.charge(t0, u64::MAX, 0);
        slow.charge(t0, u64::MAX, 0);
        assert!(slow.ready(t0).unwrap_err() >= Duration::from_secs(1 << 30));
    }

    #[test]
    fn limiter_arms_its_timer_and_fires() {
        let cfg = limits(None, Some((1000, 1)));
        let mut l = RateLimiter::new(&cfg).unwrap();
        assert!(l.try_consume(0, 1));
        // The next op waits about 1 ms: the timer is armed and becomes readable.
        assert!(!l.try_consume(0, 1));
        assert_eq!(l.throttled_count(), 1);
        let mut pfd = libc::pollfd {
            fd: l.timer_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the stack, for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
        assert_eq!(n, 1);
        l.timer_fired();
        // Already consumed: a second acknowledgement does not block.
        l.timer_fired();
        assert!(l.try_consume(0, 1));
    }
}

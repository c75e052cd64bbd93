//! The VMM process's start time, the reference of the boot timer and the start-up trace.
//!
//! The CLI calls [`mark_process_start`] as the first thing in `main`. We use that timestamp rather than
//! the kernel's `starttime` (/proc/self/stat field 22) because the latter counts in clock ticks
//! (10 ms at USER_HZ=100), coarser than what it measures; the cost is that exec and the dynamic
//! loader (well under a millisecond for `vmm`) are not counted, which a benchmark that spawns `vmm`
//! measures from the outside anyway. An embedder that never calls it gets the time of its first
//! [`process_start`] call, at the latest when the first [`crate::Vm`] is built.

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Records now as the process start, unless it was recorded already. Call it first thing in `main`.
pub fn mark_process_start() -> Instant {
    *START.get_or_init(Instant::now)
}

/// The recorded process start (recording it now if nobody did).
pub fn process_start() -> Instant {
    mark_process_start()
}

/// Microseconds since the recorded process start.
pub(crate) fn micros_since_start() -> u128 {
    process_start().elapsed().as_micros()
}

/// Logs a step of the `-v` start-up trace with its time since the process started, the same
/// reference as the first KVM_RUN and the boot timer.
pub(crate) fn step_done(step: &str) {
    log::info!(
        "{:>8.3} ms  {step}",
        process_start().elapsed().as_secs_f64() * 1e3
    );
}

//! AVX registers under a kernel that does not save them.
//!
//! glibc's memcpy and friends use AVX when CPUID offers it and XCR0 enables it. A guest kernel
//! booted with `noxsave` (which hosts whose KVM cannot virtualize CPUID make vmm add; see
//! DESIGN.md) saves only the x87/SSE registers at a context switch, yet on such a host user code
//! still runs AVX: CPUID and XCR0 are the host's. The upper halves of the YMM registers then pass
//! from one thread to the next, and a copy interrupted by a switch stores another thread's bytes.
//! The agent's pipes lost 16 of every 32 bytes that way. When the kernel says it does not manage
//! the AVX state (`ARCH_GET_XCOMP_SUPP`) while the CPU runs AVX, the agent runs itself, and by
//! default the commands it starts, with glibc's AVX paths turned off.

use std::sync::atomic::{AtomicBool, Ordering};

/// The glibc tunable that keeps its string and memory functions on SSE.
pub const TUNABLES: (&str, &str) = (
    "GLIBC_TUNABLES",
    "glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512BW,-AVX512VL,-FMA,-AVX_Fast_Unaligned_Load",
);

/// `arch_prctl` code: the extended states the kernel supports (Linux 5.16 and later).
const ARCH_GET_XCOMP_SUPP: libc::c_int = 0x1022;
/// The YMM (AVX) state component in an XSAVE feature mask.
const XFEATURE_YMM: u64 = 1 << 2;

static AVX_OFF: AtomicBool = AtomicBool::new(false);

/// Whether commands should get [`TUNABLES`] (set by [`check`]).
pub fn off() -> bool {
    AVX_OFF.load(Ordering::Relaxed)
}

/// Decides from the CPU and the kernel; when AVX must be off and this process was started
/// without [`TUNABLES`], runs this program again with them (returning only if that fails).
pub fn check() {
    let unmanaged = must_turn_off(
        std::arch::is_x86_feature_detected!("avx"),
        kernel_xfeatures(),
    );
    AVX_OFF.store(unmanaged, Ordering::Relaxed);
    if !unmanaged || std::env::var_os(TUNABLES.0).is_some() {
        return;
    }
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    // Before /proc is mounted (PID 1 of the initramfs) argv[0] is the path the kernel ran.
    let program = std::env::current_exe().map_or(argv0.clone(), |p| p.into_os_string());
    let e = std::process::Command::new(program)
        .arg0(argv0)
        .args(args)
        .env(TUNABLES.0, TUNABLES.1)
        .exec();
    eprintln!("vmm-agent: cannot run again without AVX ({e}); copies may lose bytes");
}

/// AVX must be off when the CPU runs it and the kernel says it does not save its registers. A
/// kernel too old to say (`None`) is trusted.
fn must_turn_off(cpu_runs_avx: bool, kernel_xfeatures: Option<u64>) -> bool {
    cpu_runs_avx && kernel_xfeatures.is_some_and(|mask| mask & XFEATURE_YMM == 0)
}

fn kernel_xfeatures() -> Option<u64> {
    let mut mask = 0u64;
    // SAFETY: ARCH_GET_XCOMP_SUPP writes one u64 to the address given, which is `mask`.
    let ret = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_XCOMP_SUPP, &mut mask) };
    (ret == 0).then_some(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avx_goes_off_only_when_the_kernel_says_it_does_not_save_it() {
        // x87 + SSE only: a noxsave kernel.
        assert!(must_turn_off(true, Some(0b11)));
        assert!(!must_turn_off(true, Some(0b111)));
        assert!(!must_turn_off(false, Some(0b11)));
        assert!(!must_turn_off(true, None));
    }

    #[test]
    fn this_kernel_answers_with_at_least_x87_and_sse() {
        // The host running the tests is a normal kernel: it manages x87 and SSE.
        let mask = kernel_xfeatures().expect("ARCH_GET_XCOMP_SUPP on Linux >= 5.16");
        assert_eq!(mask & 0b11, 0b11);
    }

    #[test]
    fn the_tunable_names_glibc_features() {
        assert!(TUNABLES.1.starts_with("glibc.cpu.hwcaps=-AVX,"));
        assert!(!TUNABLES.1.contains(' '));
    }
}

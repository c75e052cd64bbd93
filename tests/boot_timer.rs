//! The boot timer (`--boot-timer`, port 0x440 / MMIO 0xc0000000) and the benchmark guests
//! (crates/test-guests: null, exit_cost_pio, exit_cost_mmio, park) on real KVM.

mod common;

use std::time::Duration;

use common::{run_vmm, Run, Running, Scratch};

const TIMEOUT: Duration = Duration::from_secs(60);

/// The microseconds of every `boot-timer: N µs since process start` line on stderr.
fn boot_timer_lines(run: &Run) -> Vec<u64> {
    run.stderr
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("boot-timer: ")? + "boot-timer: ".len()..];
            rest.strip_suffix(" µs since process start")?.parse().ok()
        })
        .collect()
}

fn expect_one_mark(run: &Run) -> u64 {
    run.expect_success();
    let marks = boot_timer_lines(run);
    run.expect(
        marks.len() == 1,
        &format!("expected one boot-timer line, got {marks:?}"),
    );
    marks[0]
}

#[test]
fn boot_timer_port_mark_is_reported_once() {
    require_kvm!();
    let run = run_vmm(&["--kernel", test_guests::NULL, "--boot-timer"], TIMEOUT);
    let us = expect_one_mark(&run);
    run.expect(us > 0, "a boot takes some time");
    run.expect(run.stdout.is_empty(), "the null guest prints nothing");
}

#[test]
fn boot_timer_mmio_mark_is_reported_once() {
    require_kvm!();
    let run = run_vmm(
        &[
            "--kernel",
            test_guests::EXIT_COST_PIO,
            "--boot-timer",
            "--cmdline",
            "count=0 boot_timer_mmio=0xc0000000",
        ],
        TIMEOUT,
    );
    expect_one_mark(&run);
}

#[test]
fn boot_timer_is_a_log_line_with_verbose() {
    require_kvm!();
    let run = run_vmm(
        &["--kernel", test_guests::NULL, "--boot-timer", "-v"],
        TIMEOUT,
    );
    expect_one_mark(&run);
    run.expect(
        run.stderr.contains("first KVM_RUN at "),
        "-v shows the start-up trace",
    );
}

#[test]
fn boot_timer_is_silent_without_the_flag() {
    require_kvm!();
    let run = run_vmm(&["--kernel", test_guests::NULL], TIMEOUT);
    run.expect_success();
    run.expect(boot_timer_lines(&run).is_empty(), "no boot-timer line");
    // Without the device the mark is a write to an unclaimed port: still a clean exit.
    run.expect(run.stderr.is_empty(), "nothing on stderr");
}

#[test]
fn boot_exit_cost_pio_guest_finishes() {
    require_kvm!();
    let run = run_vmm(
        &[
            "--kernel",
            test_guests::EXIT_COST_PIO,
            "--boot-timer",
            "--cmdline",
            "count=2000",
        ],
        TIMEOUT,
    );
    expect_one_mark(&run);
}

#[test]
fn boot_exit_cost_mmio_guest_finishes() {
    require_kvm!();
    let scratch = Scratch::new("exit-cost-mmio");
    let disk = scratch.file("disk.img", &[0u8; 4096]);
    let run = run_vmm(
        &[
            "--kernel",
            test_guests::EXIT_COST_MMIO,
            "--disk",
            &disk,
            "--boot-timer",
            "--cmdline",
            "count=2000",
        ],
        TIMEOUT,
    );
    expect_one_mark(&run);
}

#[test]
fn boot_park_guest_stays_up_until_killed() {
    require_kvm!();
    let mut vmm = Running::start(&["--kernel", test_guests::PARK]);
    vmm.wait_for_line("parked", TIMEOUT);
    std::thread::sleep(Duration::from_millis(200));
    assert!(vmm.is_running(), "the parked guest must keep the VM up");
}

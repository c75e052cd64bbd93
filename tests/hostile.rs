//! Hostile guests: the tiny `hostile` guest (crates/test-guests/guests/hostile.c) attacks one
//! virtio device (blk, console, net) through its registers, queue configuration, descriptor chains,
//! rings and notifications, while a second device (a blk disk, the witness) must keep working.
//! The VMM must answer every attack sanely (an error status, a used chain, or DEVICE_NEEDS_RESET;
//! never silence), serve valid requests again after a device reset, keep the witness and the vCPU
//! running, log a bounded number of lines, and exit 0 when the guest resets. Needs KVM; the net
//! test also needs root (a network namespace with a tap).

mod common;

use std::time::Duration;

use common::netns::NetNs;
use common::{run_vmm, s, Run, Scratch};
use test_guests::{Report, HOSTILE, HOSTILE_ATTACKS};

/// Generous: most of the run is the 110 000-exit notification flood (README has the time).
const TIMEOUT: Duration = Duration::from_secs(240);

/// Attacks that leave a queue misconfigured: DRIVER_OK must end in DEVICE_NEEDS_RESET.
const BAD_QUEUE_CONFIG: &[&str] = &[
    "qnum_zero",
    "qnum_npot",
    "qnum_big",
    "qnum_huge",
    "q_outside_ram",
    "q_mmio_gap",
    "q_ram_end",
    "q_misaligned",
    "q_wrap",
];

/// Attacks that publish a broken chain: the device must use it or ask for a reset, not drop it.
const CHAIN_ATTACKS: &[&str] = &[
    "desc_loop",
    "chain_longer_than_queue",
    "zero_len_descs",
    "zero_len_chain",
    "next_oob",
    "head_oob",
    "indirect_loop",
    "indirect_odd_len",
    "indirect_outside_ram",
    "buf_outside_ram",
    "buf_in_mmio_gap",
    "buf_huge",
    "len_overflow",
    "avail_idx_lie",
    "same_head_many",
];

/// Most stderr lines a whole hostile run may produce: a handful of one-time warnings per device,
/// whatever the number of bad requests (a log line per bad request would be thousands).
const MAX_LOG_LINES: usize = 12;

fn disk(scratch: &Scratch, name: &str) -> String {
    scratch.file(name, &vec![0u8; 1 << 20])
}

fn num(run: &Run, r: &Report, key: &str) -> u64 {
    r.num(key)
        .unwrap_or_else(|| panic!("guest did not report {key}\n{run}"))
}

/// Everything every hostile run must show, whatever the target.
fn check(run: &Run, target_type: u64, rounds: u64) -> Report {
    let r = run.finished_report();
    run.expect(!run.stdout.contains("error="), "guest setup error");
    run.expect(num(run, &r, "target_type") == target_type, "target type");
    for k in ["start_target", "start_witness"] {
        run.expect(num(run, &r, k) == 0xf, &format!("{k}: device started"));
    }
    for k in ["start_target_valid", "start_witness_valid"] {
        run.expect(num(run, &r, k) == 1, &format!("{k}: valid request served"));
    }
    run.expect(
        num(run, &r, "attacks") == HOSTILE_ATTACKS.len() as u64 * rounds,
        "every attack ran",
    );
    let all = |key: &str| -> Vec<u64> {
        let v: Vec<u64> = r
            .get_all(key)
            .iter()
            .map(|x| test_guests::parse_num(x).expect("number"))
            .collect();
        run.expect(v.len() as u64 == rounds, &format!("{key}: one per round"));
        v
    };
    for a in HOSTILE_ATTACKS {
        for (fact, want) in [("recover", 1), ("witness", 1)] {
            let key = format!("{a}_{fact}");
            run.expect(all(&key).iter().all(|&v| v == want), &key);
        }
    }
    for a in BAD_QUEUE_CONFIG {
        let key = format!("{a}_needs_reset");
        run.expect(all(&key).iter().all(|&v| v == 1), &key);
    }
    for a in CHAIN_ATTACKS {
        let key = format!("{a}_res");
        run.expect(
            all(&key).iter().all(|&v| v == 1 || v == 2),
            &format!("{key}: the device neither used the chain nor asked for a reset"),
        );
    }
    for (key, want) in [
        ("head_oob_res", 2),
        ("avail_idx_lie_res", 2),
        ("config_past_end_tail_nonzero", 0),
        ("status_order_driver_ok_without_features_ok", 0),
        ("queue_sel_num_max_oob", 0),
        ("queue_sel_works", 1),
        ("used_idx_lie_served", 1),
        ("notify_flood_served", 1),
        ("regs_garbage_magic", 0x7472_6976),
    ] {
        run.expect(
            all(key).iter().all(|&v| v == want),
            &format!("{key} = {want:#x}"),
        );
    }
    run.expect(
        all("used_idx_lie_used_idx").iter().all(|&v| v != 0x5555),
        "the device kept its own used index",
    );
    let lines = run.stderr.lines().count();
    run.expect(
        lines <= MAX_LOG_LINES,
        &format!("{lines} stderr lines: the VMM must log once, not per bad request"),
    );
    run.expect(!run.stderr.contains("panicked"), "the VMM panicked");
    // Log once: no message twice (timestamps aside), however often the guest repeats an attack.
    let mut seen = std::collections::HashSet::new();
    for l in run.stderr.lines() {
        let msg = l.split_once("] ").map_or(l, |(_, m)| m);
        run.expect(seen.insert(msg), &format!("logged twice: {msg}"));
    }
    r
}

fn blk_args<'a>(a: &'a str, b: &'a str, cmdline: &'a str) -> Vec<&'a str> {
    vec![
        "--kernel",
        HOSTILE,
        "--memory",
        "128M",
        "--cmdline",
        cmdline,
        "--disk",
        a,
        "--disk",
        b,
    ]
}

#[test]
fn boot_hostile_guest_vs_virtio_blk() {
    require_kvm!();
    let scratch = Scratch::new("hostile-blk");
    let (a, b) = (disk(&scratch, "target.img"), disk(&scratch, "witness.img"));
    let run = run_vmm(&blk_args(&a, &b, "hostile=blk"), TIMEOUT);
    let r = check(&run, 2, 1);
    // Reads into memory that is not RAM (beyond it, or in the MMIO gap) get VIRTIO_BLK_S_IOERR.
    for key in ["buf_outside_ram_st", "buf_in_mmio_gap_st"] {
        run.expect(r.num(key) == Some(1), &format!("{key}: IOERR"));
    }
    // The images are still 1 MiB: no write went past the end.
    for p in [&a, &b] {
        let len = std::fs::metadata(p).expect("image").len();
        run.expect(len == 1 << 20, &format!("{p} is {len} bytes"));
    }
}

/// Two rounds of every attack: the log does not grow with the number of bad requests.
#[test]
fn boot_hostile_guest_log_is_bounded_over_rounds() {
    require_kvm!();
    let scratch = Scratch::new("hostile-rounds");
    let (a, b) = (disk(&scratch, "target.img"), disk(&scratch, "witness.img"));
    let run = run_vmm(&blk_args(&a, &b, "hostile=blk hostile_rounds=2"), TIMEOUT);
    check(&run, 2, 2);
}

#[test]
fn boot_hostile_guest_vs_virtio_console() {
    require_kvm!();
    let scratch = Scratch::new("hostile-console");
    let w = disk(&scratch, "witness.img");
    let out = scratch.path("console.out");
    let console = format!("file={}", s(&out));
    let run = run_vmm(
        &[
            "--kernel",
            HOSTILE,
            "--memory",
            "128M",
            "--cmdline",
            "hostile=console",
            "--disk",
            &w,
            "--console",
            &console,
            "--serial",
            "stdio",
        ],
        TIMEOUT,
    );
    check(&run, 3, 1);
    let text = std::fs::read(&out).expect("console output");
    let n = String::from_utf8_lossy(&text)
        .matches("hostile-tx\n")
        .count();
    // Every valid transmit after each recovery reached the backend.
    run.expect(
        n > HOSTILE_ATTACKS.len(),
        &format!("{n} valid console lines"),
    );
}

#[test]
fn boot_hostile_guest_vs_virtio_net() {
    require_kvm!();
    let scratch = Scratch::new("hostile-net");
    let w = disk(&scratch, "witness.img");
    let ns = NetNs::new("hostile");
    let run = ns.run_vmm(
        &[
            "--kernel",
            HOSTILE,
            "--memory",
            "128M",
            "--cmdline",
            "hostile=net",
            "--disk",
            &w,
            "--net",
            "tap=vmmhostile0,create=on",
        ],
        TIMEOUT,
    );
    check(&run, 1, 1);
}

/// The split irqchip's devices under attack (the `irq` guest with `irq_attack`): random writes at
/// every I/O APIC offset and width and entries of every delivery mode, 20 000 mask flips (each a
/// routing update), every PIT control word with random counts, then channel 0 at its shortest
/// period. The VMM stays up and quiet, bounds the interrupt storm to one per
/// `devices::legacy::MIN_IRQ_PERIOD` (200 µs: at most 500 in the guest's 100 ms), and both devices
/// work afterwards.
#[test]
fn boot_hostile_guest_vs_ioapic_and_pit() {
    require_kvm!();
    let run = run_vmm(
        &[
            "--kernel",
            test_guests::IRQ,
            "--irqchip",
            "split",
            "--cmdline",
            "irq_attack",
        ],
        TIMEOUT,
    );
    let r = run.finished_report();
    run.expect(!run.stdout.contains("timeout="), "a PIT window never ended");
    let storm = num(&run, &r, "attack_storm_ticks");
    run.expect(
        (1..=502).contains(&storm),
        &format!("{storm} interrupts in 100 ms at the shortest period"),
    );
    run.expect(
        num(&run, &r, "attack_other_irqs") == 0,
        "a garbage entry delivered an interrupt",
    );
    let after = num(&run, &r, "after_periodic_ticks");
    run.expect(
        (5..=51).contains(&after),
        &format!("{after} periodic ticks in 50 ms after the attack"),
    );
    run.expect(
        run.stderr.lines().count() <= MAX_LOG_LINES,
        "too many log lines",
    );
}

//! Bad input: each case gets one clear `error:` line naming the thing and the fix, and exit status 1
//! (VMM errors) or 2 (usage errors). Nothing is left running and no data is touched.

mod common;

use std::os::fd::AsRawFd;
use std::time::Duration;

use common::{run_vmm, Run, Scratch};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Exit 1 with exactly one line on stderr, `error: …`, containing every `needle`.
fn expect_error(run: &Run, needles: &[&str]) {
    run.expect(run.code == Some(1), "expected exit status 1");
    let lines: Vec<&str> = run.stderr.lines().collect();
    run.expect(lines.len() == 1, "expected exactly one line on stderr");
    run.expect(
        lines[0].starts_with("error: "),
        "the line does not start with 'error: '",
    );
    for n in needles {
        run.expect(
            lines[0].contains(n),
            &format!("the error does not mention '{n}'"),
        );
    }
}

/// Exit 2 with clap's usage error mentioning every `needle`.
fn expect_usage_error(run: &Run, needles: &[&str]) {
    run.expect(run.code == Some(2), "expected exit status 2");
    run.expect(run.stderr.starts_with("error: "), "no 'error: ' line");
    for n in needles {
        run.expect(
            run.stderr.contains(n),
            &format!("the error does not mention '{n}'"),
        );
    }
}

#[test]
fn missing_kernel() {
    require_kvm!();
    let run = run_vmm(&["--kernel", "/nonexistent/vmlinux"], TIMEOUT);
    expect_error(&run, &["kernel", "/nonexistent/vmlinux", "No such file"]);
}

#[test]
fn not_a_kernel() {
    require_kvm!();
    let scratch = Scratch::new("not-a-kernel");
    let text = scratch.file("notes.txt", &b"this is not a kernel\n".repeat(100));
    let run = run_vmm(&["--kernel", &text], TIMEOUT);
    expect_error(&run, &["notes.txt", "not a bootable kernel", "--kernel"]);

    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.resize(4096, 0xa5);
    let elf = scratch.file("corrupt.elf", &elf);
    let run = run_vmm(&["--kernel", &elf], TIMEOUT);
    expect_error(&run, &["corrupt.elf", "not a bootable kernel"]);

    let run = run_vmm(&["--kernel", scratch.0.to_str().unwrap()], TIMEOUT);
    expect_error(&run, &["directory"]);
}

#[test]
fn missing_disk() {
    require_kvm!();
    let run = run_vmm(
        &[
            "--kernel",
            test_guests::ECHO_CMDLINE,
            "--disk",
            "/nonexistent/root.img",
        ],
        TIMEOUT,
    );
    expect_error(&run, &["/nonexistent/root.img", "No such file"]);
}

#[test]
fn disk_locked_by_another_process() {
    require_kvm!();
    let scratch = Scratch::new("locked");
    let disk = scratch.file("disk.img", &vec![0u8; 1 << 20]);
    let holder = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .unwrap();
    // SAFETY: flock on a descriptor we own.
    let locked = unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(locked, 0);
    let run = run_vmm(
        &["--kernel", test_guests::ECHO_CMDLINE, "--disk", &disk],
        TIMEOUT,
    );
    expect_error(&run, &["disk.img", "locked"]);
    // Read-only users share the lock with each other but not with a writer.
    let run = run_vmm(
        &[
            "--kernel",
            test_guests::ECHO_CMDLINE,
            "--disk",
            &format!("{disk},readonly=on"),
        ],
        TIMEOUT,
    );
    expect_error(&run, &["disk.img", "locked"]);
    drop(holder);
    let run = run_vmm(
        &["--kernel", test_guests::ECHO_CMDLINE, "--disk", &disk],
        TIMEOUT,
    );
    run.expect_success();
}

#[test]
fn cpus_out_of_range() {
    let run = run_vmm(&["--kernel", "k", "--cpus", "0"], TIMEOUT);
    expect_usage_error(&run, &["--cpus"]);
    let run = run_vmm(&["--kernel", "k", "--cpus", "many"], TIMEOUT);
    expect_usage_error(&run, &["--cpus"]);
    require_kvm!();
    let run = run_vmm(
        &["--kernel", test_guests::ECHO_CMDLINE, "--cpus", "255"],
        TIMEOUT,
    );
    expect_error(&run, &["--cpus 255"]);
}

#[test]
fn irqchip_unknown_mode_is_a_usage_error() {
    let run = run_vmm(&["--kernel", "k", "--irqchip", "userspace"], TIMEOUT);
    expect_usage_error(&run, &["--irqchip", "'userspace'", "auto, split or kernel"]);
}

#[test]
fn memory_sizes_refused() {
    let run = run_vmm(&["--kernel", "k", "--memory", "0"], TIMEOUT);
    expect_usage_error(&run, &["--memory", "zero"]);
    let run = run_vmm(&["--kernel", "k", "--memory", "12Q"], TIMEOUT);
    expect_usage_error(&run, &["--memory", "unit"]);
    require_kvm!();
    let run = run_vmm(
        &["--kernel", test_guests::ECHO_CMDLINE, "--memory", "100T"],
        TIMEOUT,
    );
    expect_error(&run, &["--memory", "more than this host"]);
}

#[test]
fn initrd_larger_than_memory() {
    require_kvm!();
    let scratch = Scratch::new("big-initrd");
    let initrd = scratch.file("big.cpio", &vec![1u8; 40 << 20]);
    let run = run_vmm(
        &[
            "--kernel",
            test_guests::PVH_INFO,
            "--memory",
            "32M",
            "--initrd",
            &initrd,
        ],
        TIMEOUT,
    );
    expect_error(&run, &["big.cpio", "does not fit", "--memory"]);
}

#[test]
fn cmdline_longer_than_kernel_accepts() {
    require_kvm!();
    let long = "x".repeat(3000);
    for kernel in [test_guests::PVH_INFO, test_guests::BZIMAGE_INFO] {
        let run = run_vmm(&["--kernel", kernel, "--cmdline", &long], TIMEOUT);
        expect_error(&run, &["command line", "at most", "--cmdline"]);
    }
}

#[test]
fn bad_disk_option() {
    let run = run_vmm(&["--kernel", "k", "--disk", "x.img,cache=none"], TIMEOUT);
    expect_usage_error(&run, &["--disk", "cache"]);
}

#[test]
fn bad_rate_limits_are_usage_errors() {
    for (opt, value, names) in [
        ("--disk", "x.img,bw=0", ["bw=0", "at least 1"]),
        ("--disk", "x.img,bw=abc", ["bw=abc", "not a number"]),
        ("--disk", "x.img,iops=ten", ["iops=ten", "not a number"]),
        ("--disk", "x.img,bw_burst=1M", ["bw_burst", "without bw"]),
        ("--net", "tap=t0,pps=0", ["pps=0", "at least 1"]),
    ] {
        let run = run_vmm(&["--kernel", "k", opt, value], TIMEOUT);
        expect_usage_error(&run, &[opt, names[0], names[1]]);
    }
}

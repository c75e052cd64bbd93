//! Fat boots: the real Linux test guest (resources/) on real KVM. On this project's CI hosts a Linux
//! guest takes about a minute to reach init (DESIGN.md, "Host quirks"), so each boot checks many things
//! at once and the time-outs are generous; a hung guest still fails.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{linux_guest, run_vmm, run_vmm_interactive, s, Run, Scratch};

const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
const GIB: u64 = 1 << 30;

/// The command line the checks run under: the serial console, reset on reboot, and the init's test switch.
fn test_cmdline(test: &str, token: &str) -> String {
    format!("console=ttyS0 reboot=k panic=1 vmmtest={test} vmmtoken={token}")
}

/// Boots with the init's checks and returns the run once it has passed them and exited 0.
fn boot_with_checks(args: &[&str]) -> Run {
    let run = run_vmm(args, BOOT_TIMEOUT);
    run.expect(run.stdout.contains("VMM-INIT-OK"), "no init marker");
    run.expect(
        run.stdout.contains("VMM-TEST-DONE"),
        "checks did not finish",
    );
    run.expect_success();
    run
}

fn copy_rootfs(scratch: &Scratch, from: &std::path::Path) -> String {
    let to = scratch.path("rootfs.ext4");
    std::fs::copy(from, &to).expect("copy rootfs");
    s(&to).to_string()
}

fn sha256(path: &str) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Reads a file out of an ext4 image without mounting it.
fn debugfs_cat(image: &str, file: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {file}"), image])
        .output()
        .expect("run debugfs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// ELF vmlinux through its PVH entry with an ext4 root on /dev/vda, a second writable raw disk and a
/// third read-only one: what the guest writes lands in the images, and the read-only one is untouched.
/// A fourth disk is rate limited (bw=512K, iops=10): the guest's timed direct reads complete and
/// never measure above either limit (+10%). How close to the limit they get depends on the host:
/// where the guest kernel is emulated (DESIGN.md, "Host quirks") every guest syscall and I/O costs milliseconds
/// of guest CPU and, with other guests booting beside it, Linux may not even reach these limits;
/// the ±10% accuracy is proved from inside a tiny guest that can (tests/rate_limit.rs).
#[test]
fn boot_linux_pvh_disk_root_three_disks() {
    require_kvm!();
    let guest = linux_guest();
    let scratch = Scratch::new("linux-pvh-disk");
    let rootfs = copy_rootfs(&scratch, &guest.rootfs);
    let mut vdb = b"HOST-PREFILL-VDB".to_vec();
    vdb.resize(1 << 20, 0);
    let vdb = scratch.file("vdb.raw", &vdb);
    let vdc = scratch.file("vdc.raw", &vec![0x5a; 1 << 20]);
    let vdc_hash = sha256(&vdc);
    let vdd = scratch.path("vdd.raw");
    std::fs::File::create(&vdd)
        .and_then(|f| f.set_len(48 << 20))
        .expect("sparse vdd image");
    let token = "tok-pvh-7f3a";

    // The init ends with busybox `poweroff -f`: ACPI S5 ends the VM with 0, and -v says PowerOff.
    let cmdline = format!("{} vmmend=poweroff", test_cmdline("full", token));
    let run = boot_with_checks(&[
        "-v",
        "--kernel",
        s(&guest.vmlinux),
        "--cmdline",
        &cmdline,
        "--disk",
        &rootfs,
        "--disk",
        &format!("{vdb},id=second-disk"),
        "--disk",
        &format!("{vdc},readonly=on"),
        "--disk",
        &format!("path={},readonly=on,bw=512K,iops=10", s(&vdd)),
    ]);
    run.expect_check("cpus", "1");
    run.expect_check("root", "/dev/vda");
    run.expect_check("root_write", "ok");
    run.expect_check("vdb_write", "ok");
    run.expect_check("vdb_before", "HOST-PREFILL-VDB");
    run.expect_check("vdc_write", "refused");
    run.expect_check("vdc_ro", "1");
    // The disks came from the ACPI DSDT, not from the command line.
    run.expect_check("acpi", "on");
    run.expect_check("cmdline_virtio_mmio", "0");
    run.expect(
        run.stderr.contains("guest stopped: PowerOff"),
        "poweroff did not end the VM through ACPI",
    );

    // What the guest wrote is in the images on the host.
    assert_eq!(
        debugfs_cat(&rootfs, "/vmm-token.txt").trim(),
        token,
        "{run}"
    );
    let vdb_bytes = std::fs::read(&vdb).unwrap();
    let expect = format!("VDB:{token}");
    assert_eq!(&vdb_bytes[..expect.len()], expect.as_bytes(), "{run}");
    assert_eq!(sha256(&vdc), vdc_hash, "the read-only image changed\n{run}");

    // The rate limits as the guest measures them: the reads completed ("failed" if a dd did not),
    // and the limiter held them to the limit. Only the upper bound holds under any host load; a
    // slow or busy host makes Linux read below the limit (the figures are printed to see how far).
    for (key, limit) in [("rate_bw_kib_s", 512.0), ("rate_milli_iops", 10_000.0)] {
        let value = run.check(key);
        eprintln!("{key}: measured {value:?}, limit {limit}");
        let measured: Option<f64> = value.as_deref().and_then(|v| v.parse().ok());
        run.expect(
            measured.is_some_and(|m| m > 0.0),
            &format!("{key} = {value:?}: the timed reads did not complete"),
        );
        let measured = measured.unwrap_or_default();
        run.expect(
            measured <= limit * 1.10,
            &format!(
                "{key} = {measured}: above the limit {limit} + 10%: the limiter did not limit"
            ),
        );
    }
}

/// ELF vmlinux (PVH) with an initramfs, 4 vCPUs and 4 GiB (RAM split around the MMIO gap) and the
/// guest's own `acpi=off`: the guest finds its 4 CPUs through the MP table and sees 4 GiB. The slowest boot here: the guest kernel initialises a struct
/// page per 4 KiB of RAM, each slow where the guest kernel is emulated (README has the time).
#[test]
fn boot_linux_pvh_initramfs_smp_4_cpus_4g() {
    require_kvm!();
    let guest = linux_guest();
    let cmdline = format!("{} acpi=off", test_cmdline("full", "tok-smp"));
    let run = boot_with_checks(&[
        "--kernel",
        s(&guest.vmlinux),
        "--initrd",
        s(&guest.initramfs),
        "--cpus",
        "4",
        "--memory",
        "4G",
        "--cmdline",
        &cmdline,
    ]);
    run.expect_check("root", "rootfs");
    run.expect_check("cpus", "4");
    run.expect_check("acpi", "off");
    let mem_kb: u64 = run
        .check("memtotal_kb")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mem = mem_kb * 1024;
    run.expect(
        mem > 4 * GIB * 95 / 100 && mem <= 4 * GIB,
        &format!("MemTotal {mem} bytes is not within 5% of 4 GiB"),
    );
}

/// bzImage through the 64-bit boot protocol with an initramfs (no disk); the init ends the VM
/// through the exit device (`devmem` on its MMIO page) with status 7, vmm's exit status.
#[test]
fn boot_linux_bzimage_initramfs() {
    require_kvm!();
    let guest = linux_guest();
    let cmdline = format!(
        "{} vmmend=exit vmmexit=7",
        test_cmdline("full", "tok-bz-initrd")
    );
    let run = run_vmm(
        &[
            "--kernel",
            s(&guest.bzimage),
            "--initrd",
            s(&guest.initramfs),
            "--cmdline",
            &cmdline,
        ],
        BOOT_TIMEOUT,
    );
    run.expect(
        run.stdout.contains("VMM-TEST-DONE"),
        "checks did not finish",
    );
    run.expect(
        run.code == Some(7),
        "the init's status through the exit device",
    );
    run.expect_check("root", "rootfs");
    run.expect_check("cpus", "1");
}

/// The README's promise: `vmm --kernel K --disk D` with no other flag boots to a shell on the console;
/// what the person types reaches the shell, and `poweroff` ends the VM with status 0. bzImage, disk
/// root.
#[test]
fn boot_linux_bzimage_disk_root_interactive_shell() {
    require_kvm!();
    let guest = linux_guest();
    let scratch = Scratch::new("linux-bz-disk");
    let rootfs = copy_rootfs(&scratch, &guest.rootfs);
    let run = run_vmm_interactive(
        &["--kernel", s(&guest.bzimage), "--disk", &rootfs],
        &[
            ("to end the VM", "echo typed-$((6*7)); cat /proc/cmdline\n"),
            ("typed-42", "poweroff\n"),
        ],
        BOOT_TIMEOUT,
    );
    run.expect(run.stdout.contains("VMM-INIT-OK"), "no init marker");
    run.expect(run.stdout.contains("typed-42"), "typed command did not run");
    run.expect(
        run.stdout.contains("root=/dev/vda"),
        "VMM did not add root=/dev/vda",
    );
    run.expect_success();
}

/// `kill -TERM` of vmm presses the ACPI power button: the guest kernel's power-button driver
/// signals init, which powers off; vmm exits 0.
#[test]
fn boot_linux_sigterm_presses_the_power_button() {
    require_kvm!();
    let guest = linux_guest();
    let cmdline = "console=ttyS0 reboot=k panic=1 vmmtest=powerbutton";
    let mut vmm = common::Running::start(&[
        "--kernel",
        s(&guest.vmlinux),
        "--initrd",
        s(&guest.initramfs),
        "--cmdline",
        cmdline,
    ]);
    vmm.wait_for_line("VMM-WAITING-FOR-POWER-BUTTON", BOOT_TIMEOUT);
    // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
    unsafe { libc::kill(vmm.child.id() as libc::pid_t, libc::SIGTERM) };
    vmm.wait_for_line("VMM-POWER-BUTTON", Duration::from_secs(120));
    let code = vmm.signal_and_wait(0, Duration::from_secs(120));
    assert_eq!(code, Some(0), "stderr: {}", vmm.stop());
}

/// A guest kernel panic reaches vmm through pvpanic: exit 4 and one line, whether the guest would
/// reboot (`panic=1`) or hang (no `panic=`) after it.
fn panic_ends_the_vm(cmdline: &str) {
    require_kvm!();
    let guest = linux_guest();
    let run = run_vmm(
        &[
            "--kernel",
            s(&guest.vmlinux),
            "--initrd",
            s(&guest.initramfs),
            "--cmdline",
            cmdline,
        ],
        BOOT_TIMEOUT,
    );
    run.expect(
        run.stdout.contains("VMM-PANICKING"),
        "the init did not panic",
    );
    run.expect(run.code == Some(4), "a guest panic must exit 4");
    run.expect(
        run.stderr.trim_end().ends_with("guest kernel panicked"),
        "no 'guest kernel panicked' line",
    );
}

#[test]
fn boot_linux_panic_with_panic_1_exits_4() {
    panic_ends_the_vm("console=ttyS0 reboot=k panic=1 vmmtest=panic");
}

#[test]
fn boot_linux_panic_without_panic_param_exits_4() {
    panic_ends_the_vm("console=ttyS0 reboot=k vmmtest=panic");
}

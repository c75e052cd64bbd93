//! ACPI on real KVM with tiny guests: the tables a guest finds and walks (checksums, the MADT
//! against --cpus, the DSDT against the devices, `iasl -d` on the dump), the platform registers
//! (power off, reset), pvpanic, the power button on SIGTERM and the exit status of each ending.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use common::{run_vmm, vmm_command, Run, Running, Scratch};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The tables a run of the ACPI guest dumped, by signature (`RSD ` is not dumped).
fn tables(run: &Run) -> HashMap<String, Vec<u8>> {
    let mut map = HashMap::new();
    for dump in run.all("dump") {
        let (sig, hex) = dump.split_once(',').expect("dump=SIG,HEX");
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        map.insert(sig.to_string(), bytes);
    }
    map
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// The APIC IDs of the MADT's enabled local APICs, and its flags.
fn madt(table: &[u8]) -> (Vec<u8>, u32) {
    let flags = u32::from_le_bytes(table[40..44].try_into().unwrap());
    let mut at = 44;
    let mut ids = Vec::new();
    while at + 2 <= table.len() {
        let (kind, len) = (table[at], table[at + 1] as usize);
        assert!(len >= 2, "MADT entry of length {len}");
        if kind == 0 && table[at + 4] & 1 == 1 {
            ids.push(table[at + 3]);
        }
        at += len;
    }
    (ids, flags)
}

/// Disks for `n` virtio-mmio slots.
fn disks(scratch: &Scratch, n: usize) -> Vec<String> {
    (0..n)
        .flat_map(|i| {
            let path = scratch.file(&format!("d{i}.img"), &[0u8; 4096]);
            ["--disk".to_string(), path]
        })
        .collect()
}

fn run_acpi_guest(kernel: &str, extra: &[&str]) -> Run {
    let mut args = vec!["--kernel", kernel];
    args.extend_from_slice(extra);
    run_vmm(&args, TIMEOUT)
}

#[test]
fn boot_acpi_tables_are_found_valid_and_match_the_machine() {
    require_kvm!();
    let scratch = Scratch::new("acpi-tables");
    for (cpus, slots) in [(1, 0), (4, 2), (32, 3)] {
        let disk_args = disks(&scratch, slots);
        let cpus_arg = cpus.to_string();
        let mut args = vec!["--cpus", &cpus_arg];
        args.extend(disk_args.iter().map(String::as_str));
        let run = run_acpi_guest(test_guests::ACPI, &args);
        run.expect_success();
        let facts = run.facts();
        run.expect(
            facts.get("rsdp").map(String::as_str) == Some("0xe0000"),
            "no RSDP in 0xe0000..0x100000",
        );
        run.expect(
            facts.get("start_info_rsdp") == facts.get("rsdp"),
            "the PVH start info does not point at the RSDP",
        );
        run.expect(
            facts.get("rsdp_checksum").map(String::as_str) == Some("ok"),
            "RSDP checksum",
        );
        let listed = run.all("table");
        run.expect(
            listed.len() == 4 && listed.iter().all(|t| t.ends_with(",ok")),
            "XSDT, FACP, DSDT (through the FADT), APIC, with valid checksums",
        );
        let t = tables(&run);
        let (ids, flags) = madt(&t["APIC"]);
        assert_eq!(ids, (0..cpus).collect::<Vec<u8>>(), "one LAPIC per vCPU");
        assert_eq!(flags, 0, "split irqchip: no 8259 PICs");
        let dsdt = &t["DSDT"];
        assert_eq!(
            count(dsdt, b"LNRO0005\0"),
            slots,
            "one virtio device per disk"
        );
        for slot in 0..slots as u32 {
            let base = (0xd000_0000u32 + slot * 0x1000).to_le_bytes();
            let memory32 = [&[0x86, 9, 0, 1][..], &base].concat();
            assert_eq!(count(dsdt, &memory32), 1, "slot {slot}'s MMIO range");
        }
        for hid in [&b"QEMU0001\0"[..], b"ACPI0013\0"] {
            assert_eq!(count(dsdt, hid), 1);
        }
    }
}

#[test]
fn boot_acpi_linux64_entry_finds_the_rsdp_in_the_zero_page_and_the_kernel_irqchip_has_pics() {
    require_kvm!();
    let run = run_acpi_guest(test_guests::ACPI_LINUX64, &["--irqchip", "kernel"]);
    run.expect_success();
    let facts = run.facts();
    run.expect(
        facts.get("start_info_rsdp").map(String::as_str) == Some("0xe0000"),
        "zero page acpi_rsdp_addr",
    );
    let (_, flags) = madt(&tables(&run)["APIC"]);
    assert_eq!(flags, 1, "PCAT_COMPAT with KVM's PICs");
}

#[test]
fn boot_acpi_off_writes_no_tables() {
    require_kvm!();
    let run = run_acpi_guest(test_guests::ACPI, &["--acpi", "off"]);
    run.expect_success();
    let facts = run.facts();
    run.expect(
        facts.get("rsdp").map(String::as_str) == Some("0x0")
            && facts.get("start_info_rsdp").map(String::as_str) == Some("0x0"),
        "--acpi off left an RSDP",
    );
}

#[test]
fn boot_acpi_tables_decompile_with_iasl() {
    require_kvm!();
    let iasl = Command::new("iasl").arg("-v").output();
    assert!(
        iasl.is_ok_and(|o| o.status.success()),
        "iasl is missing: apt-get install acpica-tools (resources/apt-packages.txt lists it)"
    );
    let scratch = Scratch::new("acpi-iasl");
    let disk_args = disks(&scratch, 2);
    let mut args = vec!["--cpus", "4"];
    args.extend(disk_args.iter().map(String::as_str));
    let run = run_acpi_guest(test_guests::ACPI, &args);
    run.expect_success();
    let t = tables(&run);
    for sig in ["XSDT", "FACP", "APIC", "DSDT"] {
        let dat = scratch.path(&format!("{sig}.dat"));
        std::fs::write(&dat, &t[sig]).unwrap();
        let out = Command::new("iasl")
            .arg("-d")
            .arg(&dat)
            .current_dir(&scratch.0)
            .output()
            .expect("run iasl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "iasl -d {sig}: {text}");
        assert!(
            !text.to_lowercase().contains("error") && !text.contains("Warning"),
            "iasl -d {sig} complained: {text}"
        );
        let dsl = std::fs::read_to_string(dat.with_extension("dsl")).expect("iasl wrote no .dsl");
        if sig == "DSDT" {
            for want in [
                "LNRO0005", "QEMU0001", "ACPI0013", "PNP0C0C", "PNP0501", "_S5_",
            ] {
                assert!(
                    dsl.contains(want),
                    "the decompiled DSDT lacks {want}:\n{dsl}"
                );
            }
        }
    }
}

#[test]
fn boot_acpi_poweroff_and_reset_exit_zero() {
    require_kvm!();
    for action in ["action=poweroff", "action=reset"] {
        let run = run_acpi_guest(test_guests::ACPI, &["--cmdline", action, "-v"]);
        run.expect_success();
        run.expect(
            !run.stdout.contains("=ignored"),
            "the VMM ignored the register",
        );
        run.expect(!run.stdout.lines().any(|l| l == "done"), "the guest ran on");
        let reason = if action.ends_with("poweroff") {
            "guest stopped: PowerOff"
        } else {
            "guest stopped: Reset"
        };
        run.expect(run.stderr.contains(reason), "-v does not say which");
    }
}

#[test]
fn boot_pvpanic_exits_four_with_one_line() {
    require_kvm!();
    let run = run_acpi_guest(test_guests::ACPI, &["--cmdline", "action=panic"]);
    run.expect(run.code == Some(4), "a guest panic must exit 4");
    run.expect(
        run.facts().get("pvpanic_features").map(String::as_str) == Some("0x1"),
        "pvpanic offers 'panicked' only",
    );
    run.expect(
        run.stderr.trim() == "guest kernel panicked",
        "one line on stderr",
    );
}

#[test]
fn boot_sigterm_presses_the_power_button_and_the_guest_powers_off() {
    require_kvm!();
    let kernel = test_guests::ACPI;
    let mut vmm = Running::start(&["--kernel", kernel, "--cmdline", "action=button"]);
    vmm.wait_for_line("waiting_for_button", TIMEOUT);
    let code = vmm.signal_and_wait(libc::SIGTERM, TIMEOUT);
    assert_eq!(code, Some(0), "stderr: {}", vmm.stop());
}

#[test]
fn boot_sigterm_stops_a_guest_that_ignores_the_button_after_the_timeout() {
    require_kvm!();
    let kernel = test_guests::ACPI;
    let args = [
        "--kernel",
        kernel,
        "--cmdline",
        "action=hang",
        "--shutdown-timeout",
        "300ms",
    ];
    let mut vmm = Running::start(&args);
    vmm.wait_for_line("hanging", TIMEOUT);
    let start = std::time::Instant::now();
    let code = vmm.signal_and_wait(libc::SIGTERM, TIMEOUT);
    assert_eq!(code, Some(143), "stderr: {}", vmm.stop());
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "stopped before the timeout"
    );
    let stderr = vmm.stop();
    assert!(
        stderr.contains("did not power off within 300ms"),
        "{stderr}"
    );
}

#[test]
fn boot_second_sigterm_or_no_acpi_stops_at_once() {
    require_kvm!();
    let kernel = test_guests::ACPI;
    // Without ACPI there is no power button: the first SIGTERM stops the VM.
    let mut vmm = Running::start(&[
        "--kernel",
        kernel,
        "--cmdline",
        "action=hang",
        "--acpi",
        "off",
    ]);
    vmm.wait_for_line("hanging", TIMEOUT);
    assert_eq!(vmm.signal_and_wait(libc::SIGTERM, TIMEOUT), Some(143));
    assert!(vmm.stop().contains("no power button"));

    // The guest's own acpi=off: nobody hears the button, so the first SIGTERM stops the VM too.
    let mut vmm = Running::start(&["--kernel", kernel, "--cmdline", "action=hang acpi=off"]);
    vmm.wait_for_line("hanging", TIMEOUT);
    assert_eq!(vmm.signal_and_wait(libc::SIGTERM, TIMEOUT), Some(143));
    assert!(vmm.stop().contains("no power button"));

    // --shutdown-timeout 0: no time to power off, stopped at once.
    let args = [
        "--kernel",
        kernel,
        "--cmdline",
        "action=hang",
        "--shutdown-timeout",
        "0",
    ];
    let mut vmm = Running::start(&args);
    vmm.wait_for_line("hanging", TIMEOUT);
    assert_eq!(vmm.signal_and_wait(libc::SIGTERM, TIMEOUT), Some(143));

    // With ACPI, the second SIGTERM does not wait for the (long) timeout.
    let mut vmm = Running::start(&["--kernel", kernel, "--cmdline", "action=hang"]);
    vmm.wait_for_line("hanging", TIMEOUT);
    // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
    unsafe { libc::kill(vmm.child.id() as libc::pid_t, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(200));
    let code = vmm.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert_eq!(code, Some(143));
    assert!(vmm.stop().contains("shutdown requested again"));
}

/// A caller that leaves SIGTERM and the vCPU kick signal blocked (a mask survives exec) cannot make
/// vmm unstoppable: SIGTERM still presses the button, and a 2-vCPU guest's power-off still ends
/// the VM (the other vCPU is kicked out of KVM_RUN).
#[test]
fn boot_signals_blocked_by_the_caller_still_work() {
    require_kvm!();
    let mut cmd = vmm_command(&[
        "--kernel",
        test_guests::ACPI,
        "--cpus",
        "2",
        "--cmdline",
        "action=button",
    ]);
    // SAFETY: sigprocmask is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            // Every real-time signal, the vCPU kick among them.
            for sig in libc::SIGRTMIN()..=libc::SIGRTMAX() {
                libc::sigaddset(&mut set, sig);
            }
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let mut vmm = Running::spawn(cmd);
    vmm.wait_for_line("waiting_for_button", TIMEOUT);
    assert_eq!(vmm.signal_and_wait(libc::SIGTERM, TIMEOUT), Some(0));
}

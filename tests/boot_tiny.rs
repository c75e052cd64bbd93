//! Tiny freestanding guests (crates/test-guests) booted by the `vmm` binary on real KVM. Each runs in
//! milliseconds and reports what it saw on the serial port as `key=value` lines.

mod common;

use std::time::Duration;

use common::{run_vmm, Run, Scratch};
use test_guests::{flood_line, fnv1a32, Report, FLOOD_LINES};

const TIMEOUT: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;

fn report(run: &Run) -> Report {
    Report::parse(&run.stdout)
}

/// Exit 0 through the i8042 (not the guest's triple-fault fallback), with a `done` line.
fn expect_clean_reset(run: &Run) {
    run.finished_report();
}

fn num(run: &Run, r: &Report, key: &str) -> u64 {
    r.num(key)
        .unwrap_or_else(|| panic!("guest did not report {key}\n{run}"))
}

/// Parses `addr,size,type` e820 lines.
fn e820(r: &Report) -> Vec<(u64, u64, u64)> {
    r.get_all("e820")
        .iter()
        .map(|e| {
            let v: Vec<u64> = e
                .split(',')
                .map(|n| test_guests::parse_num(n).expect("e820 number"))
                .collect();
            (v[0], v[1], v[2])
        })
        .collect()
}

/// The initrd is where the boot protocol says, intact, page aligned, inside low RAM.
fn check_initrd(run: &Run, r: &Report, data: &[u8], mem: u64) {
    let addr = num(run, r, "initrd_addr");
    let size = num(run, r, "initrd_size");
    let sum = num(run, r, "initrd_sum");
    run.expect(size == data.len() as u64, "initrd size differs");
    run.expect(sum == u64::from(fnv1a32(data)), "initrd bytes differ");
    run.expect(addr.is_multiple_of(4096), "initrd not page aligned");
    run.expect(
        addr >= MIB && addr + size <= mem.min(3 << 30),
        "initrd outside low RAM",
    );
}

fn initrd_bytes() -> Vec<u8> {
    (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

fn boot_info_guest(kernel: &str, boot: &str) {
    require_kvm!();
    let scratch = Scratch::new(boot);
    let data = initrd_bytes();
    let initrd = scratch.file("initrd.bin", &data);
    let run = run_vmm(
        &[
            "--kernel",
            kernel,
            "--initrd",
            &initrd,
            "--cmdline",
            "hello=world tiny",
        ],
        TIMEOUT,
    );
    expect_clean_reset(&run);
    let r = report(&run);
    run.expect(r.get("boot") == Some(boot), "wrong boot protocol");
    let cmdline = r.get("cmdline").unwrap_or_default();
    run.expect(
        cmdline.starts_with("hello=world tiny"),
        "command line not passed",
    );
    run.expect(
        e820(&r) == vec![(0, 0x9fc00, 1), (MIB, 128 * MIB - MIB, 1)],
        "unexpected e820 map for 128 MiB",
    );
    run.expect(num(&run, &r, "e820_count") == 2, "e820 count");
    check_initrd(&run, &r, &data, 128 * MIB);
    if boot != "pvh" {
        run.expect(
            num(&run, &r, "hdr_magic") == 0x5372_6448,
            "zero page lacks HdrS",
        );
        run.expect(
            num(&run, &r, "boot_flag") == 0xaa55,
            "zero page lacks the boot flag",
        );
        run.expect(r.get("entry") == Some("64"), "not entered in 64-bit mode");
    } else {
        run.expect(
            num(&run, &r, "magic") == 0x336e_c578,
            "bad hvm_start_info magic",
        );
        run.expect(r.get("entry") == Some("32"), "not entered in 32-bit mode");
    }
    run.expect(
        num(&run, &r, "entry_if") == 0,
        "interrupts enabled at entry",
    );
}

#[test]
fn boot_pvh_sees_cmdline_e820_initrd() {
    boot_info_guest(test_guests::PVH_INFO, "pvh");
}

#[test]
fn boot_linux64_sees_cmdline_e820_initrd() {
    boot_info_guest(test_guests::LINUX64_INFO, "linux64");
}

#[test]
fn boot_bzimage_sees_cmdline_e820_initrd() {
    boot_info_guest(test_guests::BZIMAGE_INFO, "bzimage");
}

/// Above 3 GiB, RAM is split around the 32-bit MMIO gap; both boot protocols report the same map.
#[test]
fn boot_memory_split_around_mmio_gap() {
    require_kvm!();
    for kernel in [test_guests::PVH_INFO, test_guests::LINUX64_INFO] {
        let run = run_vmm(&["--kernel", kernel, "--memory", "5G"], TIMEOUT);
        expect_clean_reset(&run);
        run.expect(
            e820(&report(&run))
                == vec![
                    (0, 0x9fc00, 1),
                    (MIB, (3 << 30) - MIB, 1),
                    (4 << 30, 2 << 30, 1),
                ],
            "unexpected e820 map for 5 GiB",
        );
    }
}

#[test]
fn boot_serial_output_arrives_intact() {
    require_kvm!();
    let run = run_vmm(&["--kernel", test_guests::SERIAL_FLOOD], TIMEOUT);
    expect_clean_reset(&run);
    let lines: Vec<&str> = run
        .stdout
        .lines()
        .skip_while(|l| *l != "flood_begin")
        .skip(1)
        .take_while(|l| *l != "flood_end")
        .collect();
    assert_eq!(lines.len(), FLOOD_LINES, "{run}");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(*line, flood_line(i), "line {i} differs");
    }
}

#[test]
fn boot_i8042_reset_exits_zero() {
    require_kvm!();
    let run = run_vmm(
        &["--kernel", test_guests::ECHO_CMDLINE, "--cmdline", "x"],
        TIMEOUT,
    );
    expect_clean_reset(&run);
    run.expect(run.stderr.is_empty(), "vmm printed on stderr without -v");
}

#[test]
fn boot_triple_fault_exits_three_with_one_line() {
    require_kvm!();
    let run = run_vmm(&["--kernel", test_guests::TRIPLE_FAULT], TIMEOUT);
    run.expect(run.code == Some(3), "a triple fault is a crash: exit 3");
    run.expect(run.stdout.contains("triple_fault=now"), "guest did not run");
    run.expect(
        run.stderr.trim() == "guest triple-faulted (a crash: x86 resets on a triple fault)",
        "one line on stderr",
    );
}

/// A KVM internal error (here a CPL0 int3 this host cannot emulate) ends the VM with status 1 and the
/// vCPU state; on a host that can emulate it the guest simply finishes.
#[test]
fn boot_internal_error_exits_one_with_state() {
    require_kvm!();
    let run = run_vmm(&["--kernel", test_guests::PVH_HANG_INTERNAL_ERROR], TIMEOUT);
    if run.stdout.contains("int3=survived") {
        expect_clean_reset(&run);
        return;
    }
    run.expect(run.code == Some(1), "internal error did not exit 1");
    run.expect(
        run.stderr.starts_with("error: vCPU 0: KVM internal error"),
        "no error line",
    );
    run.expect(run.stderr.contains("rip=0x"), "no vCPU state in the error");
    run.expect(run.stderr.lines().count() == 1, "error is not one line");
}

fn smp(cpus: u64) {
    let n = cpus.to_string();
    let run = run_vmm(&["--kernel", test_guests::SMP, "--cpus", &n], TIMEOUT);
    expect_clean_reset(&run);
    let r = report(&run);
    run.expect(
        num(&run, &r, "mp_ok") == 1,
        "MP table checksums or signatures wrong",
    );
    run.expect(num(&run, &r, "mp_cpus") == cpus, "MP table CPU count");
    run.expect(num(&run, &r, "bsp_apic_id") == 0, "BSP APIC ID");
    let mut aps: Vec<u64> = r
        .get_all("ap_apic_id")
        .iter()
        .map(|v| test_guests::parse_num(v).expect("number"))
        .collect();
    aps.sort_unstable();
    run.expect(
        aps == (1..cpus).collect::<Vec<_>>(),
        "every AP runs with its own APIC ID",
    );
    run.expect(num(&run, &r, "cpus_seen") == cpus, "CPUs seen");
}

#[test]
fn boot_smp_every_vcpu_runs_with_its_apic_id() {
    require_kvm!();
    smp(1);
    smp(4);
    smp(32);
}

/// Interrupts reach a guest that programs the I/O APIC and PIT as a kernel does, with the same
/// results whether vmm emulates them (the default split irqchip) or KVM does: periodic and
/// one-shot PIT interrupts, none while the pin is masked, the UART's interrupt, nothing on other
/// vectors; identification and read-back registers as on the 82093AA and 8254.
#[test]
fn boot_interrupts_reach_the_guest_with_either_irqchip() {
    require_kvm!();
    for irqchip in ["auto", "split", "kernel"] {
        let run = run_vmm(
            &["--kernel", test_guests::IRQ, "--irqchip", irqchip],
            TIMEOUT,
        );
        let r = run.finished_report();
        let n = |key: &str| num(&run, &r, key);
        let what = |s: &str| format!("--irqchip {irqchip}: {s}");
        run.expect(
            !run.stdout.contains("timeout="),
            &what("a PIT window never ended"),
        );
        run.expect(n("ioapic_version") == 0x17_0011, &what("I/O APIC version"));
        run.expect(n("ioapic_id") == 0x0500_0000, &what("I/O APIC ID"));
        run.expect(n("ioapic_rte0_readback") == 0x1_0030, &what("entry 0"));
        // Word access, mode 2, count loaded. (OUT, bit 7, is high in mode 2 but for one tick of
        // each period per the 8254 data sheet, as vmm has it; KVM's PIT has it the other way.)
        run.expect(
            n("pit_readback_status") & 0x7f == 0x34,
            &what("PIT read-back status"),
        );
        // 50 edges at most fit in 50 ms; late ones merge, so fewer may arrive on a busy host.
        let periodic = n("pit_periodic_ticks");
        run.expect(
            (5..=51).contains(&periodic),
            &what(&format!("{periodic} periodic ticks in 50 ms at 1 kHz")),
        );
        run.expect(
            n("pit_masked_ticks") == 0,
            &what("ticks through a masked pin"),
        );
        run.expect(n("pit_oneshot_ticks") == 1, &what("one-shot ticks"));
        run.expect(n("serial_irqs") >= 1, &what("no UART interrupt"));
        run.expect(n("other_irqs") == 0, &what("interrupts on other vectors"));
    }
}

fn disk_image(scratch: &Scratch, name: &str) -> String {
    let mut data = b"HELLO-SECTOR-0!!".to_vec();
    data.resize(MIB as usize, 0);
    scratch.file(name, &data)
}

/// 512-byte blocks allocated to a file (after its data is on disk).
fn allocated_blocks(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    f.metadata().unwrap().blocks()
}

/// Runs the tiny virtio-blk driver against a fresh image (with `extra` disk options) and checks
/// every request; returns the run. Callers check `require_kvm!()` first.
fn virtio_blk(kernel: &str, extra: &str) -> Run {
    virtio_blk_with(kernel, extra, None).0
}

/// [`virtio_blk`] with `cmdline` given to the guest; also returns the image's bytes after the
/// run.
fn virtio_blk_with(kernel: &str, extra: &str, cmdline: Option<&str>) -> (Run, Vec<u8>) {
    let scratch = Scratch::new("virtio-blk");
    let disk = disk_image(&scratch, "disk.img");
    let allocated_before = allocated_blocks(&disk);
    let disk_arg = format!("{disk},id=tiny-disk-7{extra}");
    let mut args = vec!["--kernel", kernel, "--disk", &disk_arg];
    if let Some(cmdline) = cmdline {
        // -v: the start-up steps say how the disk is served.
        args.extend(["-v", "--cmdline", cmdline]);
    }
    let run = run_vmm(&args, TIMEOUT);
    expect_clean_reset(&run);
    let r = report(&run);
    let features = num(&run, &r, "features");
    run.expect(features & (1 << 32) != 0, "no VIRTIO_F_VERSION_1");
    run.expect(features & (1 << 29) != 0, "no VIRTIO_RING_F_EVENT_IDX");
    run.expect(features & (1 << 9) != 0, "no VIRTIO_BLK_F_FLUSH");
    run.expect(features & (1 << 2) != 0, "no VIRTIO_BLK_F_SEG_MAX");
    run.expect(num(&run, &r, "ro") == 0, "writable disk offered RO");
    run.expect(
        num(&run, &r, "status") == 0xf,
        "device not live after DRIVER_OK",
    );
    run.expect(num(&run, &r, "capacity") == MIB / 512, "capacity");
    run.expect(num(&run, &r, "read_status") == 0, "read failed");
    run.expect(num(&run, &r, "read_len") == 513, "read used length");
    run.expect(
        r.get("sector0") == Some("HELLO-SECTOR-0!!"),
        "read wrong data",
    );
    run.expect(num(&run, &r, "write_status") == 0, "write failed");
    run.expect(num(&run, &r, "flush_status") == 0, "flush failed");
    run.expect(
        r.get("sector1") == Some("WRITTEN-BY-GUEST"),
        "write not read back",
    );
    run.expect(num(&run, &r, "id_status") == 0, "GET_ID failed");
    run.expect(
        r.get("id") == Some("tiny-disk-7"),
        "GET_ID returned the wrong id",
    );
    run.expect(
        num(&run, &r, "unsupp_status") == 2,
        "unknown type not VIRTIO_BLK_S_UNSUPP",
    );
    run.expect(
        num(&run, &r, "oob_status") == 1,
        "out-of-memory buffer not VIRTIO_BLK_S_IOERR",
    );
    run.expect(
        num(&run, &r, "read2_status") == 0,
        "device stopped after a bad request",
    );
    run.expect(num(&run, &r, "final_status") == 0xf, "device marked failed");
    // DISCARD and WRITE_ZEROES, negotiated and served under the real seccomp filter.
    run.expect(features & (1 << 13) != 0, "no VIRTIO_BLK_F_DISCARD");
    run.expect(features & (1 << 14) != 0, "no VIRTIO_BLK_F_WRITE_ZEROES");
    run.expect(
        num(&run, &r, "max_discard_sectors") > 0,
        "max_discard_sectors",
    );
    run.expect(num(&run, &r, "max_discard_seg") > 0, "max_discard_seg");
    run.expect(
        num(&run, &r, "max_write_zeroes_seg") > 0,
        "max_write_zeroes_seg",
    );
    run.expect(
        num(&run, &r, "write_zeroes_may_unmap") == 1,
        "write_zeroes_may_unmap",
    );
    for (key, want, what) in [
        ("write1024_status", 0, "write before discard failed"),
        ("discard_status", 0, "discard failed"),
        ("discarded_zero", 1, "discarded sector not zero"),
        ("zeroes_status", 0, "write zeroes failed"),
        ("zeroed_zero", 1, "zeroed sector not zero"),
        (
            "discard_unmap_status",
            2,
            "DISCARD with the unmap flag not UNSUPP",
        ),
        (
            "discard_past_end_status",
            1,
            "DISCARD past the end not IOERR",
        ),
        (
            "discard_short_status",
            1,
            "DISCARD with an 8-byte table not IOERR",
        ),
    ] {
        run.expect(num(&run, &r, key) == want, what);
    }
    // The second half of the image (512 KiB) is a hole now.
    let allocated_after = allocated_blocks(&disk);
    run.expect(
        allocated_after + 1024 <= allocated_before,
        &format!("no hole: {allocated_before} → {allocated_after} blocks"),
    );
    let image = std::fs::read(scratch.path("disk.img")).unwrap();
    assert_eq!(image.len() as u64, MIB, "image size changed\n{run}");
    assert!(image[MIB as usize / 2..].iter().all(|b| *b == 0), "{run}");
    assert!(
        image[1024..1536].iter().all(|b| *b == 0),
        "sector 2 not zeroed\n{run}"
    );
    assert_eq!(
        &image[512..528],
        b"WRITTEN-BY-GUEST",
        "write not in the backing file\n{run}"
    );
    assert!(image[528..1024].iter().all(|b| *b == 0), "{run}");
    (run, image)
}

#[test]
fn boot_virtio_blk_requests_land_in_backing_file() {
    require_kvm!();
    virtio_blk(test_guests::VIRTIO_BLK, "");
}

#[test]
fn boot_virtio_blk_requests_with_aio_sync() {
    require_kvm!();
    virtio_blk(test_guests::VIRTIO_BLK, ",aio=sync");
}

#[test]
fn boot_virtio_blk_requests_with_aio_io_uring() {
    require_kvm!();
    virtio_blk(test_guests::VIRTIO_BLK, ",aio=io_uring");
}

/// The guest posts 20 writes of 4 KiB before one notification, a flush, then 20 reads the same
/// way (`blk_inflight=20`): every one completes with its data intact, and the image holds the
/// writes. With io_uring they are in flight at once; with aio=sync they are served in turn.
fn virtio_blk_in_flight(aio: &str) {
    const N: u64 = 20;
    let (run, image) = virtio_blk_with(
        test_guests::VIRTIO_BLK,
        &format!(",aio={aio}"),
        Some(&format!("blk_inflight={N}")),
    );
    let r = report(&run);
    let served = if aio == "sync" {
        "synchronous I/O"
    } else {
        "io_uring"
    };
    run.expect(
        run.stderr.contains(&format!("(read-write, {served})")),
        &format!("the disk is not served with {served}"),
    );
    run.expect(
        num(&run, &r, "inflight_n") == N,
        "in-flight test did not run",
    );
    run.expect(num(&run, &r, "inflight_write_ok") == N, "writes failed");
    run.expect(num(&run, &r, "inflight_flush_status") == 0, "flush failed");
    run.expect(
        num(&run, &r, "inflight_read_ok") == N,
        "reads failed or read back wrong data",
    );
    for i in 0..N {
        let at = ((64 + 8 * i) * 512) as usize;
        let want: Vec<u8> = (0..4096u64).map(|j| (i * 37 + j * 3 + 1) as u8).collect();
        assert!(
            image[at..at + 4096] == want[..],
            "write {i} not in the image\n{run}"
        );
    }
}

#[test]
fn boot_virtio_blk_io_uring_keeps_requests_in_flight_with_data_intact() {
    require_kvm!();
    virtio_blk_in_flight("io_uring");
}

#[test]
fn boot_virtio_blk_sync_serves_many_posted_requests_with_data_intact() {
    require_kvm!();
    virtio_blk_in_flight("sync");
}

#[test]
fn boot_virtio_blk_requests_pvh_entry() {
    require_kvm!();
    virtio_blk(test_guests::VIRTIO_BLK_PVH, "");
}

#[test]
fn boot_virtio_blk_rate_limited_requests_wait_and_all_succeed() {
    require_kvm!();
    // 10 requests/s with a bucket of one: after the first, each of the driver's requests (read,
    // write, flush, read back, GET_ID, unsupported, out-of-RAM, the DISCARD and WRITE_ZEROES
    // ones, read again) waits ~100 ms in the ring, and every one still gets its normal answer
    // (checked by virtio_blk). A DISCARD counts as one request.
    let run = virtio_blk(
        test_guests::VIRTIO_BLK,
        ",iops=10,iops_burst=1,bw=1M,bw_burst=4K",
    );
    // The throttle really held them: 16 waits of 100 ms at least.
    run.expect(
        run.elapsed >= Duration::from_millis(1600),
        "requests were not throttled to 10/s",
    );
}

#[test]
fn boot_virtio_blk_read_only_refuses_writes() {
    require_kvm!();
    let scratch = Scratch::new("virtio-blk-ro");
    let disk = disk_image(&scratch, "ro.img");
    let before = std::fs::read(&disk).unwrap();
    let run = run_vmm(
        &[
            "--kernel",
            test_guests::VIRTIO_BLK,
            "--disk",
            &format!("{disk},readonly=on"),
        ],
        TIMEOUT,
    );
    expect_clean_reset(&run);
    let r = report(&run);
    run.expect(num(&run, &r, "ro") == 1, "VIRTIO_BLK_F_RO not offered");
    run.expect(num(&run, &r, "read_status") == 0, "read failed");
    run.expect(
        num(&run, &r, "write_status") == 1,
        "write to a read-only disk not refused",
    );
    run.expect(
        num(&run, &r, "features") & (3 << 13) == 0,
        "DISCARD or WRITE_ZEROES offered on a read-only disk",
    );
    run.expect(
        num(&run, &r, "discard_unnegotiated_status") == 2,
        "DISCARD on a read-only disk not UNSUPP",
    );
    assert_eq!(
        std::fs::read(&disk).unwrap(),
        before,
        "read-only image changed\n{run}"
    );
}

/// The names in a directory, sorted.
fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `vmm --disk IMAGE,snapshot=on` with TMPDIR set to an empty directory: the guest's
/// write, DISCARD and WRITE_ZEROES read back as on any writable disk, and afterwards the image
/// is byte for byte what it was, with its modification time, and neither its directory nor
/// TMPDIR holds anything new. `mode`: the image's permission bits (0444 needs no readonly=on).
fn virtio_blk_snapshot(mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new(&format!("virtio-blk-snapshot-{mode:o}"));
    let disk = disk_image(&scratch, "disk.img");
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(mode)).unwrap();
    let tmp = scratch.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let before = std::fs::read(&disk).unwrap();
    let mtime = std::fs::metadata(&disk).unwrap().modified().unwrap();
    let files = listing(&scratch.0);
    let mut cmd = common::vmm_command(&[
        "--kernel",
        test_guests::VIRTIO_BLK,
        "--disk",
        &format!("path={disk},snapshot=on"),
    ]);
    cmd.env("TMPDIR", &tmp);
    let run = common::run_command(cmd, TIMEOUT);
    expect_clean_reset(&run);
    let r = report(&run);
    run.expect(num(&run, &r, "ro") == 0, "snapshot disk offered RO");
    run.expect(num(&run, &r, "write_status") == 0, "write failed");
    run.expect(
        r.get("sector1") == Some("WRITTEN-BY-GUEST"),
        "write not read back",
    );
    run.expect(num(&run, &r, "discard_status") == 0, "discard failed");
    run.expect(
        num(&run, &r, "discarded_zero") == 1,
        "discarded sector not zero",
    );
    run.expect(num(&run, &r, "zeroes_status") == 0, "write zeroes failed");
    run.expect(num(&run, &r, "zeroed_zero") == 1, "zeroed sector not zero");
    assert!(
        std::fs::read(&disk).unwrap() == before,
        "the image changed\n{run}"
    );
    assert_eq!(
        std::fs::metadata(&disk).unwrap().modified().unwrap(),
        mtime,
        "the image's mtime changed\n{run}"
    );
    assert_eq!(listing(&scratch.0), files, "{run}");
    assert!(listing(&tmp).is_empty(), "{run}");
}

#[test]
fn boot_virtio_blk_snapshot_leaves_the_image_and_no_file() {
    require_kvm!();
    virtio_blk_snapshot(0o644);
}

#[test]
fn boot_virtio_blk_snapshot_of_a_mode_0444_image_needs_no_readonly() {
    require_kvm!();
    virtio_blk_snapshot(0o444);
}

/// SIGKILL right after the guest's write: the image is unchanged and no overlay is left
/// behind, in the image's directory or in TMPDIR (it never had a name).
#[test]
fn boot_virtio_blk_snapshot_killed_leaves_nothing() {
    require_kvm!();
    let scratch = Scratch::new("virtio-blk-snapshot-kill");
    let disk = disk_image(&scratch, "disk.img");
    let tmp = scratch.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let before = std::fs::read(&disk).unwrap();
    let files = listing(&scratch.0);
    // 10 requests/s: the guest is still at work when its write is answered.
    let mut cmd = common::vmm_command(&[
        "--kernel",
        test_guests::VIRTIO_BLK,
        "--disk",
        &format!("{disk},snapshot=on,iops=10,iops_burst=1"),
    ]);
    cmd.env("TMPDIR", &tmp);
    let mut vmm = common::Running::spawn(cmd);
    vmm.wait_for_line("write_status=0x0", TIMEOUT);
    assert!(vmm.is_running(), "vmm ended before the kill");
    // While it runs, the overlay is open and nameless.
    let pid = vmm.child.id();
    let deleted: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .filter(|l| l.ends_with(" (deleted)") && l.starts_with(scratch.0.to_str().unwrap()))
        .collect();
    assert_eq!(
        deleted.len(),
        1,
        "one unnamed overlay beside the image: {deleted:?}"
    );
    assert_eq!(vmm.signal_and_wait(libc::SIGKILL, TIMEOUT), None);
    assert!(std::fs::read(&disk).unwrap() == before, "the image changed");
    assert_eq!(listing(&scratch.0), files);
    assert!(listing(&tmp).is_empty());
}

/// The exit device: the byte a guest writes to port 0x501 or to MMIO 0xc000_1000 is vmm's exit
/// status, whatever it is, with nothing on stderr.
#[test]
fn boot_exit_device_status_is_vmms_exit_status() {
    require_kvm!();
    for (action, status) in [("exit", 0), ("exit", 7), ("exit", 255), ("exit_mmio", 42)] {
        let cmdline = format!("action={action} status={status}");
        let run = run_vmm(
            &["--kernel", test_guests::ACPI, "--cmdline", &cmdline],
            TIMEOUT,
        );
        run.expect(run.code == Some(status), "the guest's status");
        run.expect(!run.stdout.contains("exit=ignored"), "the VM ran on");
        run.expect(run.stderr.is_empty(), "vmm printed on stderr");
    }
}

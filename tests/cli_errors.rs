//! Bad input: each case gets one clear `error:` line naming the thing and the fix, and exit status 1
//! (VMM errors) or 2 (usage errors). Nothing is left running and no data is touched.

mod common;

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{run_vmm, Run, Running, Scratch};

const TIMEOUT: Duration = Duration::from_secs(30);
/// For inputs that once made vmm wait forever: a hang shows as a failure (run_vmm kills vmm and
/// fails the test at the timeout), and well before the others' timeout.
const HANG_TIMEOUT: Duration = Duration::from_secs(10);

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

/// A named pipe in `scratch`, as a String path.
fn fifo(scratch: &Scratch, name: &str) -> String {
    let path = scratch.path(name);
    let c = CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    path.to_string_lossy().into_owned()
}

#[test]
fn kernel_fifo_is_refused_without_hanging() {
    require_kvm!();
    let scratch = Scratch::new("kernel-fifo");
    let pipe = fifo(&scratch, "vmlinux");
    let run = run_vmm(&["--kernel", &pipe], HANG_TIMEOUT);
    expect_error(&run, &["vmlinux", "FIFO", "not a regular file", "--kernel"]);
}

#[test]
fn kernel_device_is_refused() {
    require_kvm!();
    for (dev, kind) in [
        ("/dev/kvm", "character device"),
        ("/dev/null", "character device"),
    ] {
        let run = run_vmm(&["--kernel", dev], HANG_TIMEOUT);
        expect_error(&run, &[dev, kind, "--kernel"]);
    }
}

#[test]
fn initrd_fifo_and_directory_are_refused_without_hanging() {
    require_kvm!();
    let scratch = Scratch::new("initrd-fifo");
    let pipe = fifo(&scratch, "initrd.cpio");
    let run = run_vmm(
        &["--kernel", test_guests::PVH_INFO, "--initrd", &pipe],
        HANG_TIMEOUT,
    );
    expect_error(&run, &["initrd.cpio", "FIFO", "--initrd"]);
    let dir = scratch.0.to_str().unwrap();
    let run = run_vmm(
        &["--kernel", test_guests::PVH_INFO, "--initrd", dir],
        HANG_TIMEOUT,
    );
    expect_error(&run, &[dir, "directory", "--initrd"]);
}

#[test]
fn disk_fifo_is_refused_without_hanging() {
    require_kvm!();
    let scratch = Scratch::new("disk-fifo");
    let pipe = fifo(&scratch, "disk.img");
    for disk in [format!("{pipe},readonly=on"), pipe.clone()] {
        let run = run_vmm(
            &["--kernel", test_guests::ECHO_CMDLINE, "--disk", &disk],
            HANG_TIMEOUT,
        );
        expect_error(&run, &["disk.img", "FIFO", "--disk"]);
    }
}

/// `aio=io_uring` on a disk only the synchronous path serves (snapshot=on) is an error naming the
/// disk and the fix, and an unknown `aio=` a usage error naming the choices.
#[test]
fn disk_aio_that_cannot_work_is_refused() {
    require_kvm!();
    let scratch = Scratch::new("disk-aio");
    let disk = scratch.file("disk.img", &[0u8; 4096]);
    let run = run_vmm(
        &[
            "--kernel",
            test_guests::ECHO_CMDLINE,
            "--disk",
            &format!("{disk},snapshot=on,aio=io_uring"),
        ],
        HANG_TIMEOUT,
    );
    expect_error(&run, &[&disk, "aio=io_uring", "snapshot=on", "--disk"]);
    let run = run_vmm(
        &[
            "--kernel",
            test_guests::ECHO_CMDLINE,
            "--disk",
            &format!("{disk},aio=native"),
        ],
        HANG_TIMEOUT,
    );
    expect_usage_error(&run, &["aio=native", "aio=sync or aio=io_uring"]);
}

#[test]
fn disk_directory_is_refused() {
    require_kvm!();
    let scratch = Scratch::new("disk-dir");
    let dir = scratch.0.to_str().unwrap();
    let run = run_vmm(
        &[
            "--kernel",
            test_guests::ECHO_CMDLINE,
            "--disk",
            &format!("{dir},readonly=on"),
        ],
        HANG_TIMEOUT,
    );
    expect_error(&run, &[dir, "directory", "--disk"]);
}

#[test]
fn disk_character_device_is_refused() {
    require_kvm!();
    for disk in ["/dev/zero", "/dev/null,readonly=on"] {
        let run = run_vmm(
            &["--kernel", test_guests::ECHO_CMDLINE, "--disk", disk],
            HANG_TIMEOUT,
        );
        expect_error(&run, &["character device", "--disk"]);
    }
}

#[test]
fn disk_smaller_than_a_sector_is_refused() {
    require_kvm!();
    let scratch = Scratch::new("disk-small");
    for (name, len) in [("empty.img", 0), ("short.img", 511)] {
        let disk = scratch.file(name, &vec![0u8; len]);
        let run = run_vmm(
            &["--kernel", test_guests::ECHO_CMDLINE, "--disk", &disk],
            HANG_TIMEOUT,
        );
        expect_error(&run, &[name, &format!("is {len} bytes"), "truncate -s 64M"]);
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), len as u64);
    }
}

#[test]
fn disk_size_not_a_multiple_of_the_sector_boots_with_a_warning() {
    require_kvm!();
    let scratch = Scratch::new("disk-odd");
    let data = vec![0x5au8; 1000];
    let disk = scratch.file("odd.img", &data);
    let run = run_vmm(
        &["--kernel", test_guests::ECHO_CMDLINE, "--disk", &disk],
        TIMEOUT,
    );
    run.expect(run.code == Some(0), "expected exit status 0");
    run.expect(
        run.stderr
            .contains("not a multiple of 512; the last 488 bytes"),
        "expected the warning about the last 488 bytes",
    );
    assert_eq!(std::fs::read(&disk).unwrap(), data, "the image changed");
}

#[test]
fn read_only_file_needs_readonly_on() {
    require_kvm!();
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new("disk-0444");
    let data = vec![7u8; 4096];
    let disk = scratch.file("ro.img", &data);
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o444)).unwrap();
    let run = run_vmm(
        &["--kernel", test_guests::ECHO_CMDLINE, "--disk", &disk],
        HANG_TIMEOUT,
    );
    expect_error(&run, &["ro.img", "mode 0444", "readonly=on"]);
    let run = run_vmm(
        &[
            "--kernel",
            test_guests::ECHO_CMDLINE,
            "--disk",
            &format!("{disk},readonly=on"),
        ],
        TIMEOUT,
    );
    run.expect_success();
    assert_eq!(std::fs::read(&disk).unwrap(), data);
}

#[test]
fn memory_too_small_for_the_kernel() {
    require_kvm!();
    let run = run_vmm(
        &["--kernel", test_guests::ECHO_CMDLINE, "--memory", "1M"],
        HANG_TIMEOUT,
    );
    expect_error(
        &run,
        &["echo_cmdline.elf", "at least 2 MiB", "--memory 2M or more"],
    );
    let run = run_vmm(
        &["--kernel", test_guests::BZIMAGE_INFO, "--memory", "1M"],
        HANG_TIMEOUT,
    );
    expect_error(&run, &["bzimage_info", "MiB of guest memory", "--memory"]);
}

#[test]
fn same_disk_twice_is_refused() {
    require_kvm!();
    let scratch = Scratch::new("disk-twice");
    let disk = scratch.file("a.img", &vec![0u8; 1 << 20]);
    let link = scratch.path("b.img");
    std::fs::hard_link(&disk, &link).unwrap();
    let link = link.to_str().unwrap();
    let dotted = format!("{}/./a.img", scratch.0.display());
    for (first, second) in [
        (disk.clone(), disk.clone()),
        (disk.clone(), link.to_string()),
        (disk.clone(), format!("{dotted},readonly=on")),
        (format!("{disk},readonly=on"), format!("{link},readonly=on")),
    ] {
        let run = run_vmm(
            &[
                "--kernel",
                test_guests::ECHO_CMDLINE,
                "--disk",
                &first,
                "--disk",
                &second,
            ],
            HANG_TIMEOUT,
        );
        expect_error(&run, &["a.img", "same file", "one --disk"]);
    }
}

/// Takes QEMU's kind of lock (a shared OFD lock) on one byte of `file`.
fn qemu_lock_byte(file: &File, byte: i64) {
    // SAFETY: all-zero is a valid flock.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_RDLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    // SAFETY: fcntl on a descriptor we own, with a live flock.
    let ret = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    assert_eq!(ret, 0, "F_OFD_SETLK on byte {byte}");
}

#[test]
fn disk_held_with_qemu_locks_is_refused() {
    require_kvm!();
    let scratch = Scratch::new("qemu-locks");
    let disk = scratch.file("disk.img", &vec![0u8; 1 << 20]);
    let ro = format!("{disk},readonly=on");
    let open = || File::open(&disk).unwrap();
    let vmm = |d: &str| {
        run_vmm(
            &["--kernel", test_guests::ECHO_CMDLINE, "--disk", d],
            HANG_TIMEOUT,
        )
    };
    let me = format!("{} (", std::process::id());

    // A QEMU writer: consistent read and write (bytes 100, 101), shares neither write nor
    // resize (201, 203). Neither a writable nor a read-only vmm disk may use the image.
    let writer = open();
    for byte in [100, 101, 201, 203] {
        qemu_lock_byte(&writer, byte);
    }
    expect_error(&vmm(&disk), &["disk.img", "locked", "write", &me]);
    expect_error(&vmm(&ro), &["disk.img", "locked", "write", &me]);
    drop(writer);

    // A QEMU reader that refuses shared writes (100, 201): a read-only vmm shares it, a
    // writable one is refused.
    let reader = open();
    for byte in [100, 201] {
        qemu_lock_byte(&reader, byte);
    }
    vmm(&ro).expect_success();
    expect_error(&vmm(&disk), &["disk.img", "locked", "share write"]);
    drop(reader);

    // A reader that shares everything (100 only) hinders nobody.
    let relaxed = open();
    qemu_lock_byte(&relaxed, 100);
    vmm(&disk).expect_success();
    drop(relaxed);
}

#[test]
fn two_vmms_never_share_a_writable_image() {
    require_kvm!();
    let scratch = Scratch::new("two-vmms");
    let disk = scratch.file("disk.img", &vec![0u8; 1 << 20]);
    let ro = format!("{disk},readonly=on");
    let park = |d: &str| {
        let mut first = Running::start(&["--kernel", test_guests::PARK, "--disk", d]);
        first.wait_for_line("parked", TIMEOUT);
        first
    };
    let second = |d: &str| {
        run_vmm(
            &["--kernel", test_guests::ECHO_CMDLINE, "--disk", d],
            HANG_TIMEOUT,
        )
    };

    let mut first = park(&disk);
    let pid = first.child.id().to_string();
    expect_error(&second(&disk), &["disk.img", "locked", "vmm", &pid]);
    expect_error(&second(&ro), &["disk.img", "locked", "vmm", &pid]);
    first.stop();

    let mut first = park(&ro);
    second(&ro).expect_success();
    expect_error(&second(&disk), &["disk.img", "locked", "vmm"]);
    first.stop();
}

const QEMU: &str = "qemu-system-x86_64";

/// Whether QEMU is installed (resources/apt-packages.txt has it); says so when it is not.
fn have_qemu() -> bool {
    let found = std::process::Command::new(QEMU)
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        eprintln!("skipping: {QEMU} is not installed (resources/apt-packages.txt has it)");
    }
    found
}

/// QEMU (a paused microvm, no guest) with `disk` on a virtio-blk device.
fn qemu_with_disk(disk: &str, read_only: bool) -> std::process::Command {
    let ro = if read_only { ",readonly=on" } else { "" };
    let mut cmd = std::process::Command::new(QEMU);
    cmd.args(["-M", "microvm", "-S", "-nodefaults", "-display", "none"])
        .args([
            "-drive",
            &format!("file={disk},if=none,format=raw,id=d0{ro}"),
        ])
        .args(["-device", "virtio-blk-device,drive=d0"]);
    cmd
}

#[test]
fn qemu_refuses_an_image_vmm_holds() {
    require_kvm!();
    if !have_qemu() {
        return;
    }
    let scratch = Scratch::new("vmm-holds");
    let disk = scratch.file("disk.img", &vec![0u8; 1 << 20]);
    for vmm_disk in [disk.clone(), format!("{disk},readonly=on")] {
        let mut vmm = Running::start(&["--kernel", test_guests::PARK, "--disk", &vmm_disk]);
        vmm.wait_for_line("parked", TIMEOUT);
        // QEMU stops at once when it cannot lock; a run past the timeout means it got the image.
        let run = common::run_command(qemu_with_disk(&disk, false), HANG_TIMEOUT);
        run.expect(run.code == Some(1), "QEMU should exit 1");
        run.expect(
            run.stderr.contains("Failed to get \"write\" lock"),
            "QEMU should name the write lock",
        );
        vmm.stop();
    }
}

#[test]
fn disk_held_by_qemu_is_refused() {
    require_kvm!();
    if !have_qemu() {
        return;
    }
    let scratch = Scratch::new("qemu-holds");
    let disk = scratch.file("disk.img", &vec![0u8; 1 << 20]);
    // A paused microvm with the image on a virtio-blk device: QEMU locks it as a writer.
    let qemu_err = scratch.path("qemu.err");
    let mut child = qemu_with_disk(&disk, false)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(File::create(&qemu_err).unwrap())
        .spawn()
        .expect("start qemu");
    let pid = child.id();
    let qemu_locks = || {
        std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
            .map(|d| {
                d.flatten()
                    .filter_map(|f| std::fs::read_to_string(f.path()).ok())
                    .collect::<String>()
            })
            .unwrap_or_default()
    };
    // Wait (bounded) until QEMU holds the bytes of a writer: write (101), write not shared (201).
    let start = Instant::now();
    let locked = loop {
        let locks = qemu_locks();
        if (holds_byte(&locks, 101) && holds_byte(&locks, 201)) || start.elapsed() > TIMEOUT {
            break holds_byte(&locks, 101);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let runs = locked.then(|| {
        [disk.clone(), format!("{disk},readonly=on")].map(|d| {
            run_vmm(
                &["--kernel", test_guests::ECHO_CMDLINE, "--disk", &d],
                HANG_TIMEOUT,
            )
        })
    });
    let after = qemu_locks();
    let alive = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    let why = format!(
        "QEMU alive: {alive}; its locks after the runs:\n{after}\nits stderr:\n{}",
        std::fs::read_to_string(&qemu_err).unwrap_or_default()
    );
    let runs = runs.unwrap_or_else(|| panic!("QEMU never locked the image; {why}"));
    for run in &runs {
        if run.code != Some(1) {
            eprintln!("{why}");
        }
        expect_error(
            run,
            &["disk.img", "locked", "write", &format!("{pid} (qemu")],
        );
    }
}

/// Whether an fdinfo text shows an OFD lock covering `byte` ("lock: 1: OFDLCK ADVISORY READ -1
/// DEV:INO START END").
fn holds_byte(fdinfo: &str, byte: u64) -> bool {
    fdinfo.lines().filter(|l| l.contains("OFDLCK")).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let n = |i: usize| {
            f.get(f.len().wrapping_sub(i))
                .and_then(|v| v.parse::<u64>().ok())
        };
        matches!((n(2), n(1)), (Some(a), Some(b)) if a <= byte && byte <= b)
    })
}

/// --vsock: a reserved CID is a usage error; with a jail that cannot be made, the socket bound
/// before it is removed again; a taken socket path names the option to change, jailed or not.
#[test]
fn vsock_usage_errors() {
    let scratch = Scratch::new("vsock-cli");
    let sock = scratch.path("v.sock");
    let sock = sock.to_str().expect("utf-8");
    let run = run_vmm(
        &["--kernel", "k", "--vsock", &format!("cid=2,socket={sock}")],
        TIMEOUT,
    );
    expect_usage_error(&run, &["--vsock", "cid 2", "3 to 4294967294"]);
    let run = run_vmm(
        &[
            "--kernel",
            "k",
            "--vsock",
            &format!("cid=3,socket={sock}"),
            "--jail",
            scratch.0.to_str().expect("utf-8"),
        ],
        TIMEOUT,
    );
    // The scratch directory is no jail root (it holds the socket by then, or vmm is not root).
    expect_error(&run, &["jail"]);
    assert!(!Path::new(sock).exists(), "the socket was removed");
    let taken = scratch.file("taken", b"");
    for jail in [None, Some(scratch.0.to_str().expect("utf-8"))] {
        let vsock = format!("cid=3,socket={taken}");
        let mut args = vec!["--kernel", test_guests::NULL, "--vsock", &vsock];
        args.extend(jail.iter().flat_map(|dir| ["--jail", dir]));
        let run = run_vmm(&args, TIMEOUT);
        expect_error(&run, &["taken", "give --vsock another socket=PATH"]);
        assert!(Path::new(&taken).exists(), "what was at the path stays");
    }
}

/// `vmm run`'s usage errors are 125 (its own failures must not look like COMMAND's statuses),
/// with clap's `error:` line naming the option.
fn expect_run_usage_error(run: &Run, needles: &[&str]) {
    run.expect(run.code == Some(125), "expected exit status 125");
    run.expect(run.stderr.starts_with("error: "), "no 'error: ' line");
    for n in needles {
        run.expect(
            run.stderr.lines().next().unwrap_or("").contains(n),
            &format!("the first line does not mention '{n}'"),
        );
    }
}

#[test]
fn run_refuses_time_limits_of_zero() {
    let run = run_vmm(
        &[
            "run",
            "--kernel",
            "/x",
            "--disk",
            "/y",
            "--timeout",
            "0",
            "--",
            "true",
        ],
        TIMEOUT,
    );
    expect_run_usage_error(&run, &["--timeout", "above 0"]);
    let run = run_vmm(
        &[
            "run",
            "--kernel",
            "/x",
            "--disk",
            "/y",
            "--ready-timeout",
            "0ms",
            "--",
            "true",
        ],
        TIMEOUT,
    );
    expect_run_usage_error(&run, &["--ready-timeout", "above 0"]);
}

#[test]
fn run_refuses_a_relative_workdir() {
    let run = run_vmm(
        &[
            "run",
            "--kernel",
            "/x",
            "--disk",
            "/y",
            "--workdir",
            "tmp",
            "--",
            "true",
        ],
        TIMEOUT,
    );
    expect_run_usage_error(&run, &["--workdir", "absolute"]);
}

#[test]
fn run_refuses_a_command_that_is_not_utf8_on_one_line() {
    use std::os::unix::ffi::OsStrExt;
    let mut cmd = common::vmm_command(&["run", "--kernel", "/x", "--disk", "/y", "--", "echo"]);
    cmd.arg(std::ffi::OsStr::from_bytes(b"a\xffb"));
    let run = common::run_command(cmd, TIMEOUT);
    run.expect(run.code == Some(125), "expected exit status 125");
    let lines: Vec<&str> = run.stderr.lines().collect();
    run.expect(lines.len() == 1, "expected exactly one line on stderr");
    run.expect(
        lines[0].starts_with("error: ")
            && lines[0].contains("argument 1")
            && lines[0].contains("UTF-8"),
        "the line does not name the argument and UTF-8",
    );
}

#[test]
fn run_help_and_vmm_version_still_exit_0() {
    let run = run_vmm(&["run", "--help"], TIMEOUT);
    run.expect(
        run.code == Some(0),
        "vmm run --help: expected exit status 0",
    );
    let run = run_vmm(&["--version"], TIMEOUT);
    run.expect(run.code == Some(0), "vmm --version: expected exit status 0");
}

#[test]
fn disk_format_refusals_are_one_line_naming_the_image() {
    require_kvm!();
    let scratch = Scratch::new("disk-format");
    // format=qcow2 on a raw image.
    let raw = scratch.file("raw.img", &[0u8; 4096]);
    let run = run_vmm(
        &[
            "--kernel",
            test_guests::ECHO_CMDLINE,
            "--disk",
            &format!("{raw},format=qcow2"),
        ],
        HANG_TIMEOUT,
    );
    expect_error(&run, &["raw.img", "not a qcow2 image", "qemu-img info"]);
    // A qcow2 header that lies about its cluster size (made here by hand: a v2 header).
    let mut header = vec![0u8; 4096];
    header[..4].copy_from_slice(b"QFI\xfb");
    header[4..8].copy_from_slice(&2u32.to_be_bytes());
    header[20..24].copy_from_slice(&63u32.to_be_bytes());
    let lying = scratch.file("lying.qcow2", &header);
    let run = run_vmm(
        &["--kernel", test_guests::ECHO_CMDLINE, "--disk", &lying],
        HANG_TIMEOUT,
    );
    expect_error(&run, &["lying.qcow2", "cluster_bits 63", "qemu-img check"]);
    // Served raw when asked: the guest boots.
    let run = run_vmm(
        &[
            "--kernel",
            test_guests::ECHO_CMDLINE,
            "--disk",
            &format!("{lying},format=raw,readonly=on"),
        ],
        HANG_TIMEOUT,
    );
    run.expect(
        run.code == Some(0),
        "format=raw on a qcow2 header did not boot",
    );
}

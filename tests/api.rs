//! The control API (`--api-socket`, `vmm ctl`, docs/API.md) on real KVM with tiny guests: pause
//! holds a counting guest and resume continues it, shutdown presses the power button, the API
//! through `vmm ctl` and through raw HTTP, garbage, huge and stalled clients, the socket's mode
//! and the paths it refuses, and the API of a jailed vmm.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ctl, s, vmm_bin, Running, Scratch};

const TIMEOUT: Duration = Duration::from_secs(30);

macro_rules! require_kvm {
    () => {
        if !common::kvm_available() {
            eprintln!("skipping: /dev/kvm not available");
            return;
        }
    };
}

/// Sends `raw` on a new connection and returns everything the server answered.
fn http(sock: &Path, raw: &[u8]) -> String {
    let mut c = UnixStream::connect(sock).expect("connect to the API");
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.write_all(raw).expect("send");
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

fn body_of(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Waits until `done` or `timeout`; returns whether it was done.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// A ticker guest with its serial port in `serial` and its API at `sock`, started and ticking.
fn start_ticker(serial: &Path, sock: &Path, extra: &[&str]) -> Running {
    let serial_arg = format!("file={}", s(serial));
    let mut args = vec![
        "--kernel",
        test_guests::TICKER,
        "--cmdline",
        "tick_tsc=20000000",
        "--serial",
        &serial_arg,
        "--api-socket",
        s(sock),
        "--shutdown-timeout",
        "200ms",
    ];
    args.extend_from_slice(extra);
    let mut vmm = Running::start(&args);
    let ticking = wait_until(TIMEOUT, || {
        std::fs::read_to_string(serial).is_ok_and(|t| t.contains("tick=3\n"))
    });
    assert!(ticking, "the guest never ticked; stderr: {}", vmm.stop());
    vmm
}

fn wait_exit(vmm: &mut Running) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = vmm.child.try_wait().expect("wait") {
            return status.code();
        }
        assert!(start.elapsed() < TIMEOUT, "vmm did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn boot_api_pause_holds_the_guest_and_resume_continues_it() {
    require_kvm!();
    let scratch = Scratch::new("api-pause");
    let serial = scratch.path("serial.txt");
    let sock = scratch.path("api.sock");
    let mut vmm = start_ticker(&serial, &sock, &["--cpus", "2"]);
    let mode = std::fs::symlink_metadata(&sock)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the API socket is its owner's only");

    let (code, out, err) = ctl(&sock, &["info"]);
    assert_eq!(code, 0, "{err}");
    let info: serde_json::Value = serde_json::from_str(&out).expect("info is JSON");
    assert_eq!(info["state"], "running", "{out}");
    assert_eq!(info["config"]["vcpus"], 2, "{out}");
    assert_ne!(
        info["config"]["irqchip"], "auto",
        "the irqchip chosen: {out}"
    );
    assert_eq!(info["config"]["kernel"], test_guests::TICKER, "{out}");
    assert!(info["uptime_ms"].as_u64().is_some(), "{out}");

    for round in 0..3 {
        let (code, out, err) = ctl(&sock, &["pause"]);
        assert_eq!((code, out.trim()), (0, "paused"), "{err}");
        let held = file_len(&serial);
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            file_len(&serial),
            held,
            "round {round}: the guest made progress while paused"
        );
        let (_, out, _) = ctl(&sock, &["info"]);
        assert!(out.contains("\"state\":\"paused\""), "{out}");
        // Pausing twice is harmless.
        assert_eq!(ctl(&sock, &["pause"]).0, 0);
        let (code, out, err) = ctl(&sock, &["resume"]);
        assert_eq!((code, out.trim()), (0, "resumed"), "{err}");
        assert!(
            wait_until(TIMEOUT, || file_len(&serial) > held),
            "round {round}: the guest did not go on after resume"
        );
    }
    // The ticker ignores the power button: stopped after --shutdown-timeout.
    let (code, out, err) = ctl(&sock, &["shutdown"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("shutdown requested"), "{out}");
    assert_eq!(wait_exit(&mut vmm), Some(143), "{}", vmm.stop());
    assert!(!sock.exists(), "the API socket was not removed at exit");
}

#[test]
fn boot_api_shutdown_of_a_paused_guest_presses_the_power_button() {
    require_kvm!();
    let scratch = Scratch::new("api-shutdown");
    let sock = scratch.path("api.sock");
    let mut vmm = Running::start(&[
        "--kernel",
        test_guests::ACPI,
        "--cmdline",
        "action=button",
        "--api-socket",
        s(&sock),
    ]);
    vmm.wait_for_line("waiting_for_button", TIMEOUT);
    assert_eq!(ctl(&sock, &["pause"]).0, 0);
    // Raw HTTP, as curl would send it.
    let answer = http(
        &sock,
        b"PUT /vm/shutdown HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(status_of(&answer), 200, "{answer}");
    vmm.wait_for_line("button=0x1", TIMEOUT);
    assert_eq!(wait_exit(&mut vmm), Some(0), "{}", vmm.stop());
}

#[test]
fn boot_api_raw_http_answers_and_refusals() {
    require_kvm!();
    let scratch = Scratch::new("api-http");
    let serial = scratch.path("serial.txt");
    let sock = scratch.path("api.sock");
    let _vmm = start_ticker(&serial, &sock, &[]);

    let answer = http(&sock, b"GET /vm HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(
        answer.contains("Content-Type: application/json\r\n"),
        "{answer}"
    );
    let info: serde_json::Value = serde_json::from_str(body_of(&answer)).expect("JSON");
    assert_eq!(info["state"], "running");
    assert_eq!(info["config"]["api_socket"], s(&sock));

    let cases: &[(&[u8], u16)] = &[
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 400),
        (b"GET /nothing HTTP/1.1\r\n\r\n", 404),
        (b"DELETE /vm HTTP/1.1\r\n\r\n", 405),
        (
            b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 5\r\n\r\njunk!",
            400,
        ),
        (
            b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n",
            413,
        ),
        (
            b"PUT /vm/snapshot HTTP/1.1\r\nContent-Length: 12\r\n\r\n{\"dir\":\"/s\"}",
            409,
        ),
    ];
    for (raw, want) in cases {
        let answer = http(&sock, raw);
        assert_eq!(status_of(&answer), *want, "{answer}");
        assert!(body_of(&answer).starts_with("{\"error\":"), "{answer}");
    }
    // A head without end is cut off at the limit, not buffered.
    let mut c = UnixStream::connect(&sock).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = c.write_all(b"GET /vm HTTP/1.1\r\nX-Long: ");
    let _ = c.write_all(&vec![b'a'; 64 * 1024]);
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    assert_eq!(status_of(&answer), 431, "{answer}");

    let (code, out, err) = ctl(&sock, &["snapshot", s(&scratch.path("snap"))]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: the control API at '")
            && err.contains("409: the VM is running: pause it first"),
        "{err}"
    );
    // The VM went on through all of it.
    let before = file_len(&serial);
    assert!(wait_until(TIMEOUT, || file_len(&serial) > before));
}

#[test]
fn boot_api_a_stalled_client_holds_neither_the_vm_nor_other_clients() {
    require_kvm!();
    let scratch = Scratch::new("api-stall");
    let serial = scratch.path("serial.txt");
    let sock = scratch.path("api.sock");
    let _vmm = start_ticker(&serial, &sock, &[]);
    let mut stalled = UnixStream::connect(&sock).unwrap();
    stalled.write_all(b"GET /vm HTTP/1.1\r\nHost: loc").unwrap();
    let start = Instant::now();
    // Another client is served meanwhile, and the guest runs on.
    let (code, out, err) = ctl(&sock, &["info"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"state\":\"running\""), "{out}");
    assert!(start.elapsed() < Duration::from_secs(3));
    let before = file_len(&serial);
    assert!(wait_until(TIMEOUT, || file_len(&serial) > before));
    // The stalled client is dropped once its time is up.
    stalled.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut answer = String::new();
    let _ = stalled.read_to_string(&mut answer);
    assert!(answer.is_empty() || status_of(&answer) == 408, "{answer}");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(15),
        "dropped after {waited:?}"
    );
    // More clients than the server takes at once, all silent: a later one is still served.
    let silent: Vec<UnixStream> = (0..40)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    let (code, _, err) = ctl(&sock, &["info"]);
    assert_eq!(code, 0, "{err}");
    drop(silent);
}

#[test]
fn api_socket_paths_are_refused_or_replaced_as_documented() {
    let scratch = Scratch::new("api-paths");
    // A regular file is left alone.
    let file = scratch.file("taken", b"mine");
    let out = Command::new(vmm_bin())
        .args(["--kernel", test_guests::TICKER, "--api-socket", &file])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("give --api-socket another PATH"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"mine");
    // A live socket is left alone.
    let live = scratch.path("live.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let out = Command::new(vmm_bin())
        .args(["--kernel", test_guests::TICKER, "--api-socket", s(&live)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("in use"), "{err}");
    assert!(live.exists());
    // No vmm there: ctl says what to check.
    let (code, _, err) = ctl(&scratch.path("none.sock"), &["info"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("is vmm running with --api-socket"), "{err}");
}

#[test]
fn boot_api_a_stale_socket_of_ours_is_replaced() {
    require_kvm!();
    let scratch = Scratch::new("api-stale");
    let serial = scratch.path("serial.txt");
    let sock = scratch.path("api.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists(), "a stale socket to begin with");
    let _vmm = start_ticker(&serial, &sock, &[]);
    assert_eq!(ctl(&sock, &["info"]).0, 0);
}

#[test]
fn boot_api_of_a_jailed_vmm() {
    if !common::root_available() {
        return;
    }
    require_kvm!();
    let scratch = Scratch::new("api-jail");
    let root = scratch.path("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let serial = scratch.path("serial.txt");
    let sock: PathBuf = scratch.path("api.sock");
    let mut vmm = start_ticker(&serial, &sock, &["--jail", s(&root)]);
    let (code, out, err) = ctl(&sock, &["info"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"state\":\"running\""), "{out}");
    assert_eq!(ctl(&sock, &["pause"]).0, 0);
    let held = file_len(&serial);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(file_len(&serial), held, "the jailed guest ran while paused");
    assert_eq!(ctl(&sock, &["resume"]).0, 0);
    assert!(wait_until(TIMEOUT, || file_len(&serial) > held));
    assert_eq!(ctl(&sock, &["shutdown"]).0, 0);
    assert_eq!(wait_exit(&mut vmm), Some(143), "{}", vmm.stop());
    assert!(
        !sock.exists(),
        "the supervisor did not remove the API socket"
    );
}

/// CPU time (user + system, in clock ticks) of vmm's thread named `name`.
fn thread_cpu(pid: u32, name: &str) -> u64 {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let dir = task.expect("task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).expect("stat");
        // The fields after the command's closing parenthesis; utime and stime are 14 and 15.
        let rest = stat.rsplit_once(')').expect("stat").1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        return fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    panic!("no thread {name} in vmm {pid}");
}

#[test]
fn boot_api_out_of_descriptors_waits_instead_of_spinning() {
    require_kvm!();
    let scratch = Scratch::new("api-emfile");
    let serial = scratch.path("serial.txt");
    let sock = scratch.path("api.sock");
    let mut vmm = start_ticker(&serial, &sock, &[]);
    let pid = vmm.child.id();
    // No descriptor left: accept4 fails with EMFILE while the client waits in the queue.
    // The lowest free descriptor number: a limit there leaves none to allocate.
    let open: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|n| !open.contains(n)).unwrap();
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reading our child's limit into a valid buffer.
    let ret = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(ret, 0);
    let set_nofile = |n: u64| {
        let limit = libc::rlimit {
            rlim_cur: n,
            rlim_max: old.rlim_max,
        };
        // SAFETY: prlimit on our own child with a valid new limit and no old-limit buffer.
        let ret = unsafe {
            libc::prlimit(
                pid as libc::pid_t,
                libc::RLIMIT_NOFILE,
                &limit,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(ret, 0, "prlimit: {}", std::io::Error::last_os_error());
    };
    set_nofile(lowest_free);
    let mut waiting = UnixStream::connect(&sock).unwrap();
    waiting.write_all(b"GET /vm HTTP/1.1\r\n\r\n").unwrap();
    // Not served while there is no descriptor for it.
    waiting
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = waiting.read(&mut byte);
    assert!(early.is_err(), "served without a descriptor? {early:?}");
    let before = thread_cpu(pid, "api");
    std::thread::sleep(Duration::from_secs(1));
    let spent = thread_cpu(pid, "api") - before;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert!(
        spent * 10 < hz,
        "the api thread spent {spent} of {hz} ticks in a second without descriptors"
    );
    // Descriptors again: the waiting client is served.
    let limit = libc::rlimit {
        rlim_cur: old.rlim_cur,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above, restoring the limit read before.
    let ret = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(ret, 0);
    waiting.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut answer = String::new();
    let _ = waiting.read_to_string(&mut answer);
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(vmm.is_running());
}

#[test]
fn boot_api_info_counts_a_disks_requests_and_waits() {
    require_kvm!();
    let scratch = Scratch::new("api-counters");
    let sock = scratch.path("api.sock");
    let disk = scratch.file("disk.img", &vec![0u8; 4 << 20]);
    // Reads for a minute, through a limiter of 200 requests per second.
    let mut vmm = Running::start(&[
        "--kernel",
        test_guests::RATE_PROBE,
        "--disk",
        &format!("{disk},iops=200"),
        "--cmdline",
        "probe_size=4096 probe_warm_ms=0 probe_ms=60000",
        "--api-socket",
        s(&sock),
    ]);
    assert!(wait_until(TIMEOUT, || sock.exists()), "no API socket");
    let counters = || {
        let (code, out, err) = ctl(&sock, &["info"]);
        assert_eq!(code, 0, "{err}");
        let info: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        let vda = info["devices"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["name"] == "vda").cloned())
            .unwrap_or_else(|| panic!("no vda in {out}"));
        assert_eq!(vda["kind"], "virtio-blk", "{out}");
        (
            vda["counters"]["requests"].as_u64().unwrap(),
            vda["counters"]["throttled"].as_u64().unwrap(),
        )
    };
    assert!(
        wait_until(TIMEOUT, || counters().0 >= 100 && counters().1 >= 1),
        "the disk's counters did not move: {:?}",
        counters()
    );
    let (first, _) = counters();
    assert!(wait_until(TIMEOUT, || counters().0 > first));
    drop(vmm.stop());
}

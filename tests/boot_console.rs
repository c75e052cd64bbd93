//! virtio-console and the console backends (stdio, file, pty, unix socket) with the tiny
//! `virtio_console` guest; the serial port on the same backends; usage errors.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{run_vmm, run_vmm_interactive, s, vmm_bin, Run, Scratch};
use test_guests::{
    console_flood, Report, CONSOLE_FLOOD_BLOCK, CONSOLE_HELLO, PVH_INFO, VIRTIO_CONSOLE,
};

const TIMEOUT: Duration = Duration::from_secs(60);

fn report(text: &str) -> Report {
    Report::parse(text)
}

/// The guest found the console, negotiated, and ended cleanly.
fn expect_console_guest(run: &Run, facts: &str) -> Report {
    let r = report(facts);
    run.expect(
        r.done,
        &format!("guest did not finish; its report:\n{facts}"),
    );
    run.expect(
        r.get("device_id") == Some("0x3"),
        &format!("no console found:\n{facts}"),
    );
    run.expect(
        r.get("status") == Some("0xf"),
        &format!("DRIVER_OK not reached:\n{facts}"),
    );
    run.expect(
        r.get("timeout").is_none(),
        &format!("a transfer timed out:\n{facts}"),
    );
    run.expect(r.get("reset_status") == Some("0x0"), "device reset");
    let features = r.num("features").unwrap_or(0);
    run.expect(features & (1 << 32) != 0, "VERSION_1 not offered");
    run.expect_success();
    r
}

#[test]
fn boot_console_stdio_output_and_input_echo() {
    require_kvm!();
    let scratch = Scratch::new("console-stdio");
    let serial = scratch.path("serial.txt");
    let run = run_vmm_interactive(
        &[
            "--kernel",
            VIRTIO_CONSOLE,
            "--cmdline",
            "console_rx=1",
            "--console",
            "stdio",
            "--serial",
            &format!("file={}", s(&serial)),
        ],
        &[(CONSOLE_HELLO, "typed-on-host 42\n")],
        TIMEOUT,
    );
    let facts = std::fs::read_to_string(&serial).expect("serial file");
    let r = expect_console_guest(&run, &facts);
    run.expect(
        run.stdout.starts_with(CONSOLE_HELLO),
        "hvc output is not on stdout",
    );
    run.expect(
        r.get("rx") == Some("typed-on-host 42"),
        "the guest did not receive the input",
    );
    run.expect(
        run.stdout.contains("rx=typed-on-host 42\n"),
        "the guest's echo is not on stdout",
    );
    // stdin is a pipe, not a terminal: no size to offer.
    run.expect(
        r.num("features").unwrap_or(0) & 1 == 0,
        "F_SIZE offered without a terminal",
    );
}

#[test]
fn boot_console_to_file_serial_on_stdout() {
    require_kvm!();
    let scratch = Scratch::new("console-file");
    let out = scratch.path("hvc0.txt");
    let run = run_vmm(
        &[
            "--kernel",
            VIRTIO_CONSOLE,
            "--console",
            &format!("file={}", s(&out)),
            "--serial",
            "stdio",
        ],
        TIMEOUT,
    );
    expect_console_guest(&run, &run.stdout);
    let text = std::fs::read_to_string(&out).expect("console file");
    run.expect(
        text == format!("{CONSOLE_HELLO}rx=\n"),
        &format!("console file holds {text:?}"),
    );
}

/// Where two byte strings first differ, for a readable failure.
fn first_difference(got: &[u8], want: &[u8]) -> String {
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    format!(
        "got {} bytes, want {}; first difference at byte {first} (block {})",
        got.len(),
        want.len(),
        first / CONSOLE_FLOOD_BLOCK
    )
}

/// 16 MiB through transmitq to a pipe read by the harness: complete and in order.
#[test]
fn boot_console_flood_16mib_arrives_complete_in_order() {
    require_kvm!();
    let scratch = Scratch::new("console-flood");
    let serial = scratch.path("serial.txt");
    let blocks = (16usize << 20).div_ceil(CONSOLE_FLOOD_BLOCK);
    let cmdline = format!("console_flood={blocks}");
    let serial_arg = format!("file={}", s(&serial));
    // The reader starts late: the pipe fills and the device has to hold the guest back.
    let vmm = Spawned::with_stdout_delay(
        &[
            "--kernel",
            VIRTIO_CONSOLE,
            "--cmdline",
            &cmdline,
            "--console",
            "stdio",
            "--serial",
            &serial_arg,
        ],
        Duration::from_millis(1000),
    );
    let (run, got) = vmm.wait_raw(Duration::from_secs(300));
    let facts = std::fs::read_to_string(&serial).expect("serial file");
    expect_console_guest(&run, &facts);
    let want = console_flood(blocks);
    assert!(want.len() >= 16 << 20);
    assert!(
        got == want,
        "flood differs: {}",
        first_difference(&got, &want)
    );
    assert_eq!(
        report(&facts).num("flood_bytes"),
        Some(want.len() as u64),
        "{facts}"
    );
    run.expect(!run.stderr.contains("dropped"), "output was dropped");
}

/// Spawns vmm with the serial report going to stdout (collected) and stderr collected line by
/// line.
struct Spawned {
    child: Child,
    stdout: mpsc::Receiver<Vec<u8>>,
    stderr: mpsc::Receiver<String>,
    stderr_seen: String,
    start: Instant,
}

impl Spawned {
    fn new(args: &[&str]) -> Spawned {
        Self::with_stdout_delay(args, Duration::ZERO)
    }

    /// Like `new`, but the VMM starts with umask 000, as a careless shell could give it.
    fn with_umask_000(args: &[&str]) -> Spawned {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("umask 000 && exec \"$0\" \"$@\"")
            .arg(vmm_bin())
            .args(args);
        Self::spawn(cmd, Duration::ZERO)
    }

    /// Like `new`, but stdout is not read before `delay` has passed.
    fn with_stdout_delay(args: &[&str], delay: Duration) -> Spawned {
        let mut cmd = Command::new(vmm_bin());
        cmd.args(args);
        Self::spawn(cmd, delay)
    }

    fn spawn(mut cmd: Command, delay: Duration) -> Spawned {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmm");
        let (tx, stdout) = mpsc::channel();
        let mut out = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            thread::sleep(delay);
            let mut all = Vec::new();
            let _ = out.read_to_end(&mut all);
            let _ = tx.send(all);
        });
        let (tx, stderr) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Spawned {
            child,
            stdout,
            stderr,
            stderr_seen: String::new(),
            start: Instant::now(),
        }
    }

    /// Waits for a stderr line starting with `prefix`; returns the rest of it.
    fn stderr_line(&mut self, prefix: &str) -> String {
        loop {
            match self.stderr.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    self.stderr_seen.push_str(&line);
                    self.stderr_seen.push('\n');
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_string();
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("no '{prefix}' line on stderr:\n{}", self.stderr_seen);
                }
            }
        }
    }

    /// Waits for vmm to exit; returns the run.
    fn wait(self) -> Run {
        self.wait_raw(TIMEOUT).0
    }

    /// Waits (up to `timeout`) for vmm to exit; returns the run and stdout's raw bytes.
    fn wait_raw(mut self, timeout: Duration) -> (Run, Vec<u8>) {
        let code = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status.code();
            }
            if self.start.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("vmm did not exit in time; stderr:\n{}", self.stderr_seen);
            }
            thread::sleep(Duration::from_millis(10));
        };
        let stdout = self.stdout.recv().unwrap_or_default();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.stderr_seen.push_str(&line);
            self.stderr_seen.push('\n');
        }
        let run = Run {
            code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: self.stderr_seen,
            elapsed: self.start.elapsed(),
        };
        (run, stdout)
    }
}

/// Reads from `r` until `want` has been seen (or the deadline passes); returns what was read.
fn read_until(r: &mut impl Read, want: &str, deadline: Duration) -> String {
    let start = Instant::now();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < deadline {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                all.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&all).contains(want) {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5))
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            // A pty whose primary side vmm closed on exit: what it wrote has been read.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

#[test]
fn boot_console_on_pty_output_and_input() {
    require_kvm!();
    let mut vmm = Spawned::new(&[
        "--kernel",
        VIRTIO_CONSOLE,
        "--cmdline",
        "console_rx=1",
        "--console",
        "pty",
        "--serial",
        "stdio",
    ]);
    let path = vmm.stderr_line("console: pty ");
    assert!(path.starts_with("/dev/pts/"), "{path}");
    let mut pty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open the pty");
    let seen = read_until(&mut pty, CONSOLE_HELLO, Duration::from_secs(30));
    assert!(seen.contains(CONSOLE_HELLO), "pty got {seen:?}");
    pty.write_all(b"via-pty\n").expect("type into the pty");
    let seen = read_until(&mut pty, "rx=via-pty\n", Duration::from_secs(30));
    assert!(seen.contains("rx=via-pty\n"), "pty got {seen:?}");
    let run = vmm.wait();
    let r = expect_console_guest(&run, &run.stdout);
    run.expect(r.get("rx") == Some("via-pty"), "input did not arrive");
}

/// A pty nobody reads for a while: the guest's output waits (back-pressure), none is lost.
#[test]
fn boot_console_pty_backpressure_loses_nothing() {
    require_kvm!();
    let blocks = (4usize << 20).div_ceil(CONSOLE_FLOOD_BLOCK);
    let mut vmm = Spawned::new(&[
        "--kernel",
        VIRTIO_CONSOLE,
        "--cmdline",
        &format!("console_flood={blocks}"),
        "--console",
        "pty",
        "--serial",
        "stdio",
    ]);
    let path = vmm.stderr_line("console: pty ");
    // Let the guest fill the pty and stall on it.
    thread::sleep(Duration::from_millis(1500));
    let mut pty = std::fs::File::open(&path).expect("open the pty");
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let want = console_flood(blocks);
    let want_len = want.len();
    let start = Instant::now();
    while got.len() < want_len && start.elapsed() < Duration::from_secs(120) {
        match pty.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read the pty: {e}"),
        }
    }
    let (run, _) = vmm.wait_raw(Duration::from_secs(180));
    expect_console_guest(&run, &run.stdout);
    assert!(
        got == want,
        "pty flood differs: {}",
        first_difference(&got, &want)
    );
}

fn connect(path: &Path) -> UnixStream {
    let start = Instant::now();
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) if start.elapsed() > Duration::from_secs(30) => {
                panic!("cannot connect to {}: {e}", path.display())
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// A client of the console socket at `sock` that has read the guest's greeting.
fn connect_and_greet(sock: &Path) -> UnixStream {
    let mut client = connect(sock);
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let seen = read_until(&mut client, CONSOLE_HELLO, Duration::from_secs(30));
    assert!(seen.contains(CONSOLE_HELLO), "socket got {seen:?}");
    client
}

/// The console guest, waiting for a line of input, with its console on a socket at `sock` and
/// the serial port on `serial`.
fn console_on_socket(sock: &Path, serial: &str) -> Spawned {
    Spawned::with_umask_000(&[
        "--kernel",
        VIRTIO_CONSOLE,
        "--cmdline",
        "console_rx=1",
        "--console",
        &format!("socket={}", s(sock)),
        "--serial",
        serial,
    ])
}

/// Output written before the client connects is kept and replayed; input typed on the socket
/// reaches the guest; a second client is refused while the first is connected.
#[test]
fn boot_console_on_unix_socket() {
    require_kvm!();
    let scratch = Scratch::new("console-socket");
    let sock = scratch.path("hvc0.sock");
    let vmm = console_on_socket(&sock, "stdio");
    let mut client = connect_and_greet(&sock);
    let mode = std::fs::metadata(&sock)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        mode, 0o600,
        "under umask 000 the socket must still be private"
    );

    let mut second = connect(&sock);
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    assert_eq!(
        second.read(&mut buf).expect("second client"),
        0,
        "a second client must be refused (closed)"
    );

    client.write_all(b"via-socket\n").expect("write");
    let seen = read_until(&mut client, "rx=via-socket\n", Duration::from_secs(30));
    assert!(seen.contains("rx=via-socket\n"), "socket got {seen:?}");
    let run = vmm.wait();
    let r = expect_console_guest(&run, &run.stdout);
    run.expect(r.get("rx") == Some("via-socket"), "input did not arrive");
    run.expect(!sock.exists(), "the socket file is removed at exit");
}

/// The UART on the socket and pty backends. Its output is written on the vCPU thread, under that
/// thread's seccomp filter (the CLI's default): the guest waits for a line on a socket console,
/// then prints its report on the serial port while a client reads it.
fn serial_report_on(serial_arg: &str, open_serial: impl FnOnce(&mut Spawned) -> Box<dyn Read>) {
    let scratch = Scratch::new("serial-backend");
    let sock = scratch.path("hvc0.sock");
    let mut vmm = console_on_socket(&sock, serial_arg);
    let mut serial = open_serial(&mut vmm);
    let mut client = connect_and_greet(&sock);
    client.write_all(b"to-serial\n").expect("write");
    let text = read_until(&mut serial, "done", Duration::from_secs(30));
    let run = vmm.wait();
    let r = expect_console_guest(&run, &text);
    run.expect(r.get("rx") == Some("to-serial"), "input did not arrive");
}

#[test]
fn boot_serial_on_unix_socket() {
    require_kvm!();
    let scratch = Scratch::new("serial-socket");
    let path = scratch.path("ttyS0.sock");
    serial_report_on(&format!("socket={}", s(&path)), |_| {
        let client = connect(&path);
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Box::new(client)
    });
}

#[test]
fn boot_serial_on_pty() {
    require_kvm!();
    serial_report_on("pty", |vmm| {
        let path = vmm.stderr_line("serial: pty ");
        assert!(path.starts_with("/dev/pts/"), "{path}");
        let pty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open the pty");
        Box::new(pty)
    });
}

/// On a terminal (a pty the test owns as vmm's stdin and stdout) the device offers F_SIZE with
/// the terminal's size.
#[test]
fn boot_console_reports_terminal_size() {
    require_kvm!();
    let scratch = Scratch::new("console-size");
    let serial = scratch.path("serial.txt");
    let (mut primary, secondary) = openpty(100, 30);
    let out = secondary.try_clone().expect("dup");
    let err = secondary.try_clone().expect("dup");
    let mut child = Command::new(vmm_bin())
        .args([
            "--kernel",
            VIRTIO_CONSOLE,
            "--console",
            "stdio",
            "--serial",
            &format!("file={}", s(&serial)),
        ])
        .stdin(Stdio::from(secondary))
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn vmm");
    let drain = thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once every secondary descriptor is closed (vmm exited).
        while let Ok(n) = primary.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    let start = Instant::now();
    let code = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st.code();
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            panic!("vmm did not exit");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let terminal = drain.join().unwrap_or_default();
    let facts = std::fs::read_to_string(&serial).expect("serial file");
    let r = report(&facts);
    assert_eq!(code, Some(0), "{facts}\n{terminal}");
    assert!(r.done, "{facts}");
    assert_eq!(r.num("features").unwrap_or(0) & 1, 1, "F_SIZE: {facts}");
    assert_eq!(r.num("cols"), Some(100), "{facts}");
    assert_eq!(r.num("rows"), Some(30), "{facts}");
    assert!(
        terminal.contains("hello from the virtio console"),
        "{terminal:?}"
    );
}

/// A pty pair with the given size: (primary, secondary).
fn openpty(cols: u16, rows: u16) -> (std::fs::File, std::fs::File) {
    let mut primary = -1;
    let mut secondary = -1;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors into the ints; the name and termios are optional.
    let ret = unsafe {
        libc::openpty(
            &mut primary,
            &mut secondary,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    assert_eq!(ret, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let files = unsafe {
        (
            std::fs::File::from_raw_fd(primary),
            std::fs::File::from_raw_fd(secondary),
        )
    };
    assert!(files.0.as_raw_fd() >= 0);
    files
}

/// With the console off the serial port behaves as before, on stdout or on a file.
#[test]
fn boot_serial_without_console_stdout_and_file() {
    require_kvm!();
    let run = run_vmm(&["--kernel", PVH_INFO], TIMEOUT);
    run.expect_success();
    run.expect(report(&run.stdout).done, "serial on stdout by default");
    run.expect(
        report(&run.stdout)
            .get("cmdline")
            .unwrap_or_default()
            .starts_with("console=ttyS0"),
        "default command line uses ttyS0",
    );

    let scratch = Scratch::new("serial-file");
    let out = scratch.path("ttyS0.txt");
    let run = run_vmm(
        &[
            "--kernel",
            PVH_INFO,
            "--serial",
            &format!("file={}", s(&out)),
        ],
        TIMEOUT,
    );
    run.expect_success();
    run.expect(run.stdout.is_empty(), "serial output went to stdout");
    let text = std::fs::read_to_string(&out).expect("serial file");
    run.expect(report(&text).done, "serial file incomplete");
}

/// With the console on and no --cmdline, the kernel console is hvc0 and the serial is off.
#[test]
fn boot_console_default_cmdline_uses_hvc0() {
    require_kvm!();
    let scratch = Scratch::new("console-cmdline");
    let out = scratch.path("hvc0.txt");
    let run = run_vmm(
        &[
            "--kernel",
            PVH_INFO,
            "--console",
            &format!("file={}", s(&out)),
        ],
        TIMEOUT,
    );
    run.expect_success();
    run.expect(run.stdout.is_empty(), "serial must default to off");
    let run = run_vmm(
        &[
            "--kernel",
            PVH_INFO,
            "--console",
            &format!("file={}", s(&out)),
            "--serial",
            "stdio",
        ],
        TIMEOUT,
    );
    run.expect_success();
    let cmdline = report(&run.stdout)
        .get("cmdline")
        .unwrap_or_default()
        .to_string();
    run.expect(
        cmdline.starts_with("console=hvc0 ") && !cmdline.contains("ttyS0"),
        "default command line with the console on",
    );
}

/// Host paths the VMM did not make are never followed, emptied or removed: a symbolic link given
/// as an output file, a regular file given as a socket path (with and without the jail, whose
/// supervisor removes socket files), and serial and console on one path are refused, exit 1, and
/// what was there is intact.
#[test]
fn host_paths_the_vmm_did_not_make_are_left_alone() {
    require_kvm!();
    let scratch = Scratch::new("console-paths");
    let victim = scratch.file("victim.txt", b"precious");
    let link = scratch.path("serial.log");
    std::os::unix::fs::symlink(&victim, &link).expect("symlink");
    let file_arg = format!("file={},truncate=on", s(&link));
    let run = run_vmm(&["--kernel", PVH_INFO, "--serial", &file_arg], TIMEOUT);
    run.expect(
        run.code == Some(1),
        "a symbolic link as output file must fail",
    );
    run.expect(run.stderr.contains("symbolic link"), "the error says why");
    run.expect(
        std::fs::read(&victim).unwrap() == b"precious",
        "the link's target is untouched",
    );

    let precious = scratch.file("precious.txt", b"precious");
    let socket_arg = format!("socket={precious}");
    let root = scratch.path("root");
    std::fs::create_dir(&root).expect("jail dir");
    let mut cases = vec![vec!["--serial", &socket_arg]];
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cases.push(vec!["--serial", &socket_arg, "--jail", s(&root)]);
    }
    for extra in cases {
        let mut args = vec!["--kernel", PVH_INFO];
        args.extend(&extra);
        let run = run_vmm(&args, TIMEOUT);
        run.expect(run.code == Some(1), &format!("{extra:?} must fail"));
        run.expect(run.stderr.contains("left alone"), "the error says why");
        run.expect(
            std::fs::read(&precious).unwrap() == b"precious",
            &format!("{extra:?}: the file at the socket path survives"),
        );
    }

    let both = scratch.path("both.txt");
    for (serial, console) in [
        (format!("file={}", s(&both)), format!("file={}", s(&both))),
        (
            format!("socket={}", s(&both)),
            format!("socket={}/./both.txt", s(&scratch.0)),
        ),
    ] {
        let run = run_vmm(
            &[
                "--kernel",
                PVH_INFO,
                "--serial",
                &serial,
                "--console",
                &console,
            ],
            TIMEOUT,
        );
        run.expect(run.code == Some(1), "one path for two devices must fail");
        run.expect(
            run.stderr.contains("different paths"),
            "the error names the fix",
        );
        run.expect(!both.exists(), "nothing is created");
    }
}

/// Output beyond a file's max= is dropped, counted and logged once; the file stops at the cap,
/// with and without the jail (which keeps RLIMIT_FSIZE at the cap).
#[test]
fn boot_serial_file_stops_at_its_cap() {
    require_kvm!();
    let scratch = Scratch::new("serial-cap");
    let root = scratch.path("root");
    std::fs::create_dir(&root).expect("jail dir");
    let mut jails = vec![vec![]];
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        jails.push(vec!["--jail", s(&root)]);
    }
    for jail in jails {
        let out = scratch.path("serial.txt");
        let _ = std::fs::remove_file(&out);
        let arg = format!("file={},max=40", s(&out));
        let mut args = vec!["--kernel", PVH_INFO, "--serial", &arg];
        args.extend(&jail);
        let run = run_vmm(&args, TIMEOUT);
        run.expect_success();
        let len = std::fs::metadata(&out).expect("output").len();
        run.expect(len == 40, &format!("{jail:?}: {len} bytes, not 40"));
        run.expect(
            run.stderr.matches("size cap").count() == 1,
            "the cap is logged once",
        );
    }
}

#[test]
fn console_usage_errors() {
    for (args, words) in [
        (vec!["--console", "bogus"], vec!["bogus"]),
        (vec!["--serial", "file="], vec!["file"]),
        (
            vec!["--console", "stdio", "--serial", "stdio"],
            vec!["--console", "--serial"],
        ),
    ] {
        let mut all = vec!["--kernel", PVH_INFO];
        all.extend(&args);
        let run = run_vmm(&all, TIMEOUT);
        run.expect(
            run.code == Some(2),
            &format!("{args:?} must be a usage error"),
        );
        for w in words {
            run.expect(run.stderr.contains(w), &format!("error must name {w}"));
        }
    }
}

/// The real Linux guest with `--console stdio` and nothing else about consoles: the default
/// command line puts the kernel console on hvc0, the serial port is off, the init and a shell run
/// on hvc0, what is typed reaches the shell, and `reboot` ends the VM with status 0.
#[test]
fn boot_linux_console_hvc0_interactive() {
    require_kvm!();
    let guest = common::linux_guest();
    let run = run_vmm_interactive(
        &[
            "--kernel",
            s(&guest.vmlinux),
            "--initrd",
            s(&guest.initramfs),
            "--console",
            "stdio",
        ],
        &[
            (
                "to end the VM",
                "echo hvc-$((6*7)); cat /sys/class/tty/console/active /proc/cmdline\n",
            ),
            ("hvc-42", "reboot\n"),
        ],
        Duration::from_secs(900),
    );
    run.expect(run.stdout.contains("VMM-INIT-OK"), "no init marker on hvc0");
    run.expect(run.stdout.contains("hvc-42"), "typed command did not run");
    run.expect(
        run.stdout.contains("console=hvc0"),
        "default command line with the console on",
    );
    run.expect(
        run.stdout.lines().any(|l| l.trim_end() == "hvc0"),
        "the kernel console is not hvc0",
    );
    run.expect_success();
}

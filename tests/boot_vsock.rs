//! virtio-vsock with the tiny `vsock` guest: a host program reaches the guest's listener through
//! the device's socket (`CONNECT <port>` / `OK <port>`), the guest reaches a host listener at
//! `PATH_<port>`, refusals are resets, a slow reader loses nothing, many connections at once.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::{s, Running, Scratch};
use test_guests::VSOCK;

const LISTEN: u32 = 1234;
const STEP: Duration = Duration::from_secs(30);

fn port_path(sock: &Path, port: u32) -> PathBuf {
    PathBuf::from(format!("{}_{port}", s(sock)))
}

fn connect(sock: &Path, port: u32) -> (UnixStream, Option<String>) {
    common::vsock_connect(sock, port, STEP)
}

fn ok_port(answer: &Option<String>) -> u32 {
    let a = answer.as_deref().expect("the guest accepted");
    a.strip_prefix("OK ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not an OK line: {a:?}"))
}

/// Reads exactly `n` bytes (or panics after `STEP`).
fn read_n(c: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    c.read_exact(&mut v).expect("read the echo");
    v
}

fn pattern(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

/// The guest, listening on `LISTEN`, with its device at `sock`; it has connected to the host
/// listener at `PATH_5000` and been refused at 5001.
fn start(sock: &Path) -> (Running, UnixListener) {
    let host = UnixListener::bind(port_path(sock, 5000)).expect("bind PATH_5000");
    let cmdline = format!("vsock_listen={LISTEN} vsock_connect=5000 vsock_refused=5001");
    let mut vmm = Running::start(&[
        "--kernel",
        VSOCK,
        "--cmdline",
        &cmdline,
        "--vsock",
        &format!("cid=3,socket={}", s(sock)),
    ]);
    for line in ["device_id=0x13", "cid=0x3", "status=0xf", "listening"] {
        vmm.wait_for_line(line, STEP);
    }
    (vmm, host)
}

/// Asks the guest to end, checks its totals (`accepted` connections) and the VMM's exit.
fn finish(mut vmm: Running, sock: &Path, accepted: u32) {
    let (_c, answer) = connect(sock, LISTEN + 1);
    assert_eq!(answer, None, "the quit port is refused");
    vmm.wait_for_line(&format!("accepted={accepted:#x}"), STEP);
    vmm.wait_for_line("reset_status=0x0", STEP);
    vmm.wait_for_line("done", STEP);
    let deadline = Instant::now() + STEP;
    while vmm.is_running() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let code = vmm.child.try_wait().expect("wait").and_then(|st| st.code());
    let stderr = vmm.stop();
    assert_eq!(code, Some(0), "vmm's exit status; stderr:\n{stderr}");
    assert!(
        !stderr.contains("seccomp"),
        "the device made a call its filter does not allow:\n{stderr}"
    );
    assert!(!sock.exists(), "the socket file is removed at exit");
}

#[test]
fn boot_vsock_both_ways_refusals_slow_reader_and_many_connections() {
    require_kvm!();
    let scratch = Scratch::new("vsock");
    let sock = scratch.path("v.sock");
    let (mut vmm, host) = start(&sock);
    // The guest's own connections: accepted at PATH_5000, refused at 5001 (nobody listens).
    vmm.wait_for_line("connect=ok", STEP);
    vmm.wait_for_line("refused=rst", STEP);

    // Guest to host: the guest connected to PATH_5000 and greets; what the host sends comes back.
    host.set_nonblocking(false).expect("blocking");
    let (mut g2h, _) = host.accept().expect("the guest's connection");
    g2h.set_read_timeout(Some(STEP)).expect("timeout");
    let mut greeting = String::new();
    BufReader::new(g2h.try_clone().expect("clone"))
        .read_line(&mut greeting)
        .expect("greeting");
    assert_eq!(greeting, "guest-hello\n");
    g2h.write_all(b"back to the guest\n").expect("write");
    assert_eq!(read_n(&mut g2h, 18), b"back to the guest\n");

    // Host to guest: echo.
    let (mut c, answer) = connect(&sock, LISTEN);
    assert!(ok_port(&answer) >= 1 << 30);
    c.write_all(b"hello, guest\n").expect("write");
    assert_eq!(read_n(&mut c, 13), b"hello, guest\n");

    // Nobody listens on guest port 999: the device closes the caller.
    let (_refused, answer) = connect(&sock, 999);
    assert_eq!(answer, None);

    // 1 MiB (more with VMM_VSOCK_TEST_MIB) through a reader that takes 16 KiB every 2 ms:
    // byte-exact, and the host's half-close ends the echo.
    let mib: usize = std::env::var("VMM_VSOCK_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let data = pattern(mib << 20, 7);
    let (big, answer) = connect(&sock, LISTEN);
    ok_port(&answer);
    let mut writer = big.try_clone().expect("clone");
    let sent = data.clone();
    let w = thread::spawn(move || {
        writer.write_all(&sent).expect("write 1 MiB");
        writer
            .shutdown(std::net::Shutdown::Write)
            .expect("half-close");
    });
    let mut reader = big;
    let mut got = Vec::with_capacity(data.len());
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("slow reader: {e} after {} bytes", got.len()),
        }
        thread::sleep(Duration::from_millis(2));
    }
    w.join().expect("writer");
    assert_eq!(got.len(), data.len(), "every byte came back");
    assert!(got == data, "byte-exact");

    // 100 connections at once, each with its own message.
    let mut many: Vec<UnixStream> = (0..100)
        .map(|_| {
            let (c, answer) = connect(&sock, LISTEN);
            ok_port(&answer);
            c
        })
        .collect();
    for (i, c) in many.iter_mut().enumerate() {
        c.write_all(&pattern(1000, i as u32)).expect("write");
    }
    for (i, c) in many.iter_mut().enumerate() {
        assert_eq!(read_n(c, 1000), pattern(1000, i as u32), "connection {i}");
    }
    drop(many);
    drop(c);
    drop(g2h);

    // The echo connection, the big one and the hundred.
    finish(vmm, &sock, 102);
}

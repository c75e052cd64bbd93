//! Hostile guests: the tiny `hostile` guest (crates/test-guests/guests/hostile.c) attacks one
//! virtio device (blk, console, net, vsock) through its registers, queue configuration, descriptor chains,
//! rings and notifications, while a second device (a blk disk, the witness) must keep working.
//! The VMM must answer every attack sanely (an error status, a used chain, or DEVICE_NEEDS_RESET;
//! never silence), serve valid requests again after a device reset, keep the witness and the vCPU
//! running, log a bounded number of lines, and exit 0 when the guest resets. Needs KVM; the net
//! test also needs root (a network namespace with a tap).

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::netns::NetNs;
use common::{run_vmm, s, vmm_command, Run, Scratch};
use test_guests::{Report, HOSTILE, HOSTILE_ATTACKS, HOSTILE_VSOCK_ATTACKS};

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

/// Everything every hostile run must show, whatever the target (`extra`: the attacks only that
/// target gets).
fn check(run: &Run, target_type: u64, rounds: u64, extra: &[&str]) -> Report {
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
        num(run, &r, "attacks") == (HOSTILE_ATTACKS.len() + extra.len()) as u64 * rounds,
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
    for a in HOSTILE_ATTACKS.iter().chain(extra) {
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
    let r = check(&run, 2, 1, &[]);
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
    check(&run, 2, 2, &[]);
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
    check(&run, 3, 1, &[]);
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
    check(&run, 1, 1, &[]);
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

/// What the host program writing at `PATH_5000` saw: connections the device made to it, how many
/// of them it found full (back-pressure), how many closed, and anything else (must be nothing).
#[derive(Debug, Default)]
struct WriterSaw {
    accepted: usize,
    blocked: usize,
    closed: usize,
    other: Vec<String>,
}

/// The host program at `PATH_5000`: accepts every connection the guest makes and writes to each
/// as fast as it is let (reading whatever the guest sends), until `stop`; then goes on until
/// every connection closed (the VMM has exited by then) or 10 s pass.
fn writer(listener: UnixListener, stop: Arc<AtomicBool>) -> WriterSaw {
    listener.set_nonblocking(true).expect("non-blocking");
    let mut saw = WriterSaw::default();
    // (stream, saw back-pressure)
    let mut conns: Vec<(UnixStream, bool)> = Vec::new();
    let chunk = vec![0x5au8; 4096];
    let mut sink = vec![0u8; 65536];
    let mut stopped_at: Option<Instant> = None;
    loop {
        loop {
            match listener.accept() {
                Ok((c, _)) => {
                    c.set_nonblocking(true).expect("non-blocking");
                    saw.accepted += 1;
                    conns.push((c, false));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    saw.other.push(format!("accept: {e}"));
                    break;
                }
            }
        }
        conns.retain_mut(|(c, blocked)| {
            let mut closed = false;
            match c.read(&mut sink) {
                Ok(0) => closed = true,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => closed = true,
                Err(e) => saw.other.push(format!("read: {e}")),
            }
            if !closed {
                match c.write(&chunk) {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => *blocked = true,
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
                        ) =>
                    {
                        closed = true
                    }
                    Err(e) => saw.other.push(format!("write: {e}")),
                }
            }
            if closed {
                saw.closed += 1;
                saw.blocked += usize::from(*blocked);
            }
            !closed
        });
        if stop.load(Ordering::Relaxed) {
            let at = *stopped_at.get_or_insert_with(Instant::now);
            if conns.is_empty() || at.elapsed() > Duration::from_secs(10) {
                break;
            }
        }
        thread::sleep(Duration::from_millis(1));
    }
    saw.blocked += conns.iter().filter(|(_, b)| *b).count();
    if !conns.is_empty() {
        saw.other.push(format!(
            "{} connections still open after the VMM exited",
            conns.len()
        ));
    }
    saw
}

/// The VMM's resident set, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|st| {
            st.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A well-behaved host program: asks for guest port `port`, sends `msg`, reads it back, ends its
/// side and reads the end. `Err` says where it went wrong.
fn well_behaved(sock: &Path, port: u32, msg: &[u8]) -> Result<(), String> {
    let mut c = UnixStream::connect(sock).map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    c.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| format!("CONNECT: {e}"))?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        match c.read(&mut b) {
            Ok(1) => line.push(b[0]),
            other => return Err(format!("the OK line: {other:?} after {line:?}")),
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(format!("not an OK line: {line:?}"));
    }
    c.write_all(msg).map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back)
        .map_err(|e| format!("read the echo: {e}"))?;
    if back != msg {
        return Err("the echo differs".into());
    }
    c.shutdown(std::net::Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    match c.read(&mut b) {
        Ok(0) => Ok(()),
        other => Err(format!("after the echo: {other:?}")),
    }
}

/// virtio-vsock: the generic attacks, then malformed headers, credit lies into small buffers, a
/// flood of requests beyond the 1024 connections (to a listener and to nobody), no receive
/// buffers while a host program writes. A host program writing to every guest connection sees
/// back-pressure or a close, nothing else; the VMM's memory stays bounded; and afterwards a
/// well-behaved host program is echoed by the guest's listener.
#[test]
fn boot_hostile_guest_vs_virtio_vsock() {
    require_kvm!();
    let scratch = Scratch::new("hostile-vsock");
    let w = disk(&scratch, "witness.img");
    let sock = scratch.path("v.sock");
    let listener =
        UnixListener::bind(format!("{}_5000", s(&sock))).expect("bind the writer's socket");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        thread::spawn(move || writer(listener, stop))
    };
    let mut child = vmm_command(&[
        "--kernel",
        HOSTILE,
        "--memory",
        "128M",
        "--cmdline",
        "hostile=vsock",
        "--disk",
        &w,
        "--vsock",
        &format!("cid=3,socket={}", s(&sock)),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn vmm");
    let pid = child.id();
    let (tx, lines) = mpsc::channel();
    let out = child.stdout.take().expect("stdout");
    thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut err = child.stderr.take().expect("stderr");
    let stderr = thread::spawn(move || {
        let mut e = String::new();
        let _ = err.read_to_string(&mut e);
        e
    });
    let start = Instant::now();
    let mut stdout = String::new();
    let (mut rss_start, mut rss_end) = (0, 0);
    let mut echo: Option<Result<(), String>> = None;
    let code = loop {
        while let Ok(l) = lines.try_recv() {
            match l.trim_end() {
                "start_witness_valid=0x1" => rss_start = rss_kib(pid),
                "final_listening" => {
                    rss_end = rss_kib(pid);
                    echo = Some(well_behaved(&sock, 1234, &[0xa5; 1000]));
                }
                _ => {}
            }
            stdout.push_str(&l);
            stdout.push('\n');
        }
        if let Some(st) = child.try_wait().expect("wait") {
            break st.code();
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vmm did not exit within {TIMEOUT:?}; stdout:\n{stdout}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    while let Ok(l) = lines.recv_timeout(Duration::from_secs(1)) {
        stdout.push_str(&l);
        stdout.push('\n');
    }
    stop.store(true, Ordering::Relaxed);
    let run = Run {
        code,
        stdout,
        stderr: stderr.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    };
    let r = check(&run, 19, 1, HOSTILE_VSOCK_ATTACKS);
    for (key, want) in [
        ("vs_headers_unused", 0),
        ("vs_headers_needs_reset", 0),
        ("vs_credit_lies_response", 1),
        ("vs_credit_lies_rw_zero_credit", 0),
        ("vs_credit_lies_rx_bad", 0),
        ("vs_credit_lies_rx_short", 1),
        ("vs_credit_lies_got", 1),
        ("vs_flood_sent", 1300),
        ("vs_flood_answered", 1),
        ("vs_flood_rx_bad", 0),
        ("vs_no_rx_taken_before", 1),
        ("vs_no_rx_resumed", 1),
        ("vs_no_rx_rx_bad", 0),
        ("final_echoed", 1000),
    ] {
        run.expect(num(&run, &r, key) == want, &format!("{key} = {want}"));
    }
    let responses = num(&run, &r, "vs_flood_responses");
    run.expect(
        responses <= 1024,
        &format!("{responses} connections at once: at most 1024"),
    );
    run.expect(
        num(&run, &r, "vs_flood_resets") >= 200,
        "every request to a port nobody listens on is reset",
    );
    run.expect(
        echo == Some(Ok(())),
        &format!("the well-behaved host program after the attacks: {echo:?}"),
    );
    let grew = rss_end.saturating_sub(rss_start);
    run.expect(
        rss_start > 0 && grew < 64 << 10,
        &format!("the VMM's RSS grew by {grew} KiB (from {rss_start} KiB)"),
    );
    let saw = writer.join().expect("the writer");
    run.expect(
        saw.other.is_empty() && saw.accepted > 0 && saw.closed == saw.accepted && saw.blocked > 0,
        &format!("the host writer saw back-pressure and closes only: {saw:?}"),
    );
}

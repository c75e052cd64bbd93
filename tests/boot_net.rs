//! virtio-net over tap, end to end with the tiny `virtio_net` guest: each test makes its own
//! network namespace (removed even when the test fails) with a tap in it, runs `vmm` inside it
//! (`ip netns exec`), captures the guest's frame from a raw AF_PACKET socket on the tap and
//! injects one towards the guest. Needs root (network namespaces) and KVM.

mod common;

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::netns::NetNs;
use common::{linux_guest, run_vmm, s};
use test_guests::{Report, NET_ETHERTYPE, NET_GUEST_TEXT, VIRTIO_NET};

const TIMEOUT: Duration = Duration::from_secs(120);
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const HOST_TEXT: &str = "VMM-NET-HOST-REPLY";

/// A raw AF_PACKET socket bound to interface `ifname` (all protocols), made in the calling
/// thread's network namespace, with a 1 s receive timeout.
fn packet_socket(ifname: &str) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket() with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index != 0, "no interface {ifname}");
    // SAFETY: zeroed sockaddr_ll is a valid value; the fields are filled in below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = index as i32;
    // SAFETY: bind with a sockaddr_ll of the right size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(r, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: SO_RCVTIMEO takes a timeval of the given size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    assert_eq!(r, 0);
    fd
}

/// One frame from the packet socket, or None after its receive timeout.
fn recv_frame(fd: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

fn mac_text(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn has_feature(report: &Report, bit: u32) -> bool {
    report.num("features").is_some_and(|f| f & (1 << bit) != 0)
}

/// The guest's broadcast frame reaches the host side of the tap intact, and the frame the host
/// sends on the tap reaches the guest with a vnet header (num_buffers 1).
#[test]
fn boot_net_tiny_guest_frames_both_ways() {
    require_kvm!();
    let ns = NetNs::new("tiny");
    ns.add_tap("tapv0");
    let sock = ns.enter(|| packet_socket("tapv0"));
    let vmm = ns.spawn_vmm(&[
        "--kernel",
        VIRTIO_NET,
        "--net",
        &format!("tap=tapv0,mac={}", mac_text(&GUEST_MAC)),
    ]);

    // The guest's frame, on the host side of the tap.
    let deadline = Instant::now() + TIMEOUT;
    let guest_frame = loop {
        assert!(
            Instant::now() < deadline,
            "no frame from the guest on tapv0"
        );
        let Some(f) = recv_frame(&sock) else { continue };
        if f.len() >= 14 && f[12..14] == NET_ETHERTYPE.to_be_bytes() {
            break f;
        }
    };
    assert_eq!(guest_frame.len(), 60, "{guest_frame:02x?}");
    assert_eq!(guest_frame[..6], [0xff; 6], "broadcast");
    assert_eq!(guest_frame[6..12], GUEST_MAC, "source is the guest's MAC");
    assert_eq!(
        &guest_frame[14..14 + NET_GUEST_TEXT.len()],
        NET_GUEST_TEXT.as_bytes()
    );

    // One frame towards the guest.
    let mut reply = Vec::new();
    reply.extend_from_slice(&GUEST_MAC);
    reply.extend_from_slice(&HOST_MAC);
    reply.extend_from_slice(&NET_ETHERTYPE.to_be_bytes());
    reply.extend_from_slice(HOST_TEXT.as_bytes());
    reply.resize(60, 0);
    // SAFETY: `reply` is valid for reads of its length.
    let n = unsafe { libc::send(sock.as_raw_fd(), reply.as_ptr().cast(), reply.len(), 0) };
    assert_eq!(n, 60, "inject: {}", std::io::Error::last_os_error());

    let run = vmm.wait(TIMEOUT);
    let r = Report::parse(&run.stdout);
    run.expect_success();
    run.expect(r.done, "no done line");
    let want = [
        ("device_id", "0x1"),
        ("mac", "52:54:00:12:34:56"),
        ("tx", "sent"),
        ("tx_used_len", "0x0"),
        ("rx_num_buffers", "0x1"),
        ("rx_dst", "52:54:00:12:34:56"),
        ("rx_src", "02:00:00:00:00:01"),
        ("rx_text", HOST_TEXT),
        ("final_status", "0x0"),
    ];
    for (key, value) in want {
        run.expect(r.get(key) == Some(value), &format!("{key}={value}"));
    }
    // The vnet header (12 bytes) in front of the 60-byte frame.
    let lens = r.get_all("rx_len");
    run.expect(lens.last() == Some(&"0x48"), "last rx_len=0x48");
    // VERSION_1, EVENT_IDX, MAC, CSUM, GUEST_CSUM, GUEST_TSO4/6, HOST_TSO4/6, MRG_RXBUF.
    for bit in [32, 29, 5, 0, 1, 7, 8, 11, 12, 15] {
        run.expect(has_feature(&r, bit), &format!("feature bit {bit} offered"));
    }
}

/// `create=on` makes the tap (gone again when vmm exits); without `mac=` the guest's MAC is
/// the stable one derived from the tap name.
#[test]
fn boot_net_create_on_and_derived_mac() {
    require_kvm!();
    let ns = NetNs::new("create");
    let run = ns
        .spawn_vmm(&[
            "--kernel",
            VIRTIO_NET,
            "--cmdline",
            "net_rx=0",
            "--net",
            "tap=vmmnew0,create=on",
        ])
        .wait(TIMEOUT);
    let r = Report::parse(&run.stdout);
    run.expect_success();
    run.expect(r.get("tx") == Some("sent"), "the guest sent its frame");
    let nic: vm::NetConfig = "tap=vmmnew0".parse().expect("parse");
    let derived = mac_text(&nic.guest_mac());
    run.expect(
        r.get("mac") == Some(derived.as_str()),
        &format!("derived MAC {derived}"),
    );
    run.expect(
        run.stderr.contains("created tap device 'vmmnew0'"),
        "says it created the tap",
    );
    let links = ns.exec(&["ip", "-o", "link"]);
    assert!(!links.contains("vmmnew0"), "the tap outlived vmm: {links}");
}

/// A tap that does not exist: exit 1, one line that says how to create it.
#[test]
fn net_missing_tap_says_how_to_create_it() {
    require_kvm!();
    let run = run_vmm(
        &["--kernel", VIRTIO_NET, "--net", "tap=vmmnosuch0"],
        Duration::from_secs(30),
    );
    run.expect(run.code == Some(1), "exit status 1");
    let lines: Vec<&str> = run.stderr.lines().collect();
    run.expect(lines.len() == 1, "one line on stderr");
    run.expect(lines[0].starts_with("error: "), "an error line");
    run.expect(
        lines[0].contains("ip tuntap add vmmnosuch0 mode tap"),
        "the hint",
    );
}

/// Bad `--net` values are usage errors (exit 2) naming the option.
#[test]
fn net_bad_options_are_usage_errors() {
    for (value, needle) in [
        ("tap=t0,mac=52:54:00:zz:34:56", "mac"),
        ("tap=t0,mac=01:00:5e:00:00:01", "multicast"),
        ("tap=t0,speed=10", "unknown net option 'speed'"),
        ("mac=52:54:00:12:34:56", "names no tap"),
    ] {
        let run = run_vmm(
            &["--kernel", VIRTIO_NET, "--net", value],
            Duration::from_secs(30),
        );
        run.expect(run.code == Some(2), &format!("{value}: exit status 2"));
        run.expect(run.stderr.contains("--net"), "names --net");
        run.expect(run.stderr.contains(needle), &format!("mentions {needle}"));
    }
}

/// Deterministic, incompressible test data (xorshift64*).
fn blob(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}

fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = data.to_vec();
    let feeder = thread::spawn(move || std::io::Write::write_all(&mut stdin, &data));
    let out = child.wait_with_output().expect("sha256sum output");
    feeder.join().expect("feeder").expect("feed sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// The Linux guest with two NICs: both MACs as asked for, eth0 configured, the host pings it, and
/// 4 MiB (VMM_NET_TEST_MIB) cross TCP each way intact (SHA-256 on the guest, byte equality on the host). Prints the
/// throughput both ways.
#[test]
fn boot_linux_net_two_nics_ping_and_tcp() {
    require_kvm!();
    // The guest kernel is emulated on the development hosts: every frame and system call it
    // handles costs it dearly, so eth0 gets a 64 KiB MTU (which also sends frames across several
    // mergeable RX buffers) and the guest moves data with tcpblast, 1 MiB per system call. The
    // default keeps the test short; VMM_NET_TEST_MIB=64 is the long run (README, Tests).
    let mib: usize = std::env::var("VMM_NET_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let len = mib << 20;
    const BOOT: Duration = Duration::from_secs(900);
    const STALL: Duration = Duration::from_secs(180);
    let guest = linux_guest();
    let ns = NetNs::new("linux");
    ns.add_tap("tapl0");
    ns.add_tap("tapl1");
    ns.exec(&["ip", "link", "set", "tapl0", "mtu", "65520"]);
    ns.exec(&["ip", "addr", "add", "10.0.2.1/24", "dev", "tapl0"]);
    let data = Arc::new(blob(len));
    let want_sha = sha256_hex(&data);

    let cmdline =
        "console=ttyS0 reboot=k panic=1 vmmtest=net vmmip=10.0.2.15/24 vmmhost=10.0.2.1 vmmmtu=65520";
    let mut vmm = ns.spawn_vmm(&[
        "--kernel",
        s(&guest.vmlinux),
        "--initrd",
        s(&guest.initramfs),
        "--memory",
        "256M",
        "--cmdline",
        cmdline,
        "--net",
        "tap=tapl0,mac=52:54:00:12:34:56",
        "--net",
        "tap=tapl1,mac=52:54:00:ab:cd:ef",
    ]);
    vmm.wait_for("VMM-NET-READY", BOOT);

    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "busybox",
            "ping",
            "-c",
            "3",
            "-W",
            "5",
            "10.0.2.15",
        ])
        .output()
        .expect("ping");
    let ping_out = String::from_utf8_lossy(&ping.stdout).into_owned();
    eprintln!("ping: {ping_out}");

    // The host's listener for guest → host exists before the guest can connect.
    let listener = ns.enter(|| std::net::TcpListener::bind("10.0.2.1:5002").expect("bind 5002"));

    // host → guest
    let to_guest = {
        let data = data.clone();
        ns.enter(move || {
            let start = Instant::now();
            let mut stream = loop {
                match std::net::TcpStream::connect("10.0.2.15:5001") {
                    Ok(s) => break s,
                    Err(e) if start.elapsed() < Duration::from_secs(120) => {
                        let _ = e;
                        thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => panic!("connect to the guest: {e}"),
                }
            };
            // A guest that stops taking data fails the test instead of hanging it.
            stream
                .set_write_timeout(Some(STALL))
                .expect("write timeout");
            stream.set_read_timeout(Some(STALL)).expect("read timeout");
            let start = Instant::now();
            std::io::Write::write_all(&mut stream, &data).expect("send to the guest");
            stream
                .shutdown(std::net::Shutdown::Write)
                .expect("shutdown");
            // The guest closes when it has everything.
            let _ = stream.read(&mut [0u8; 16]);
            start.elapsed()
        })
    };

    // guest → host
    let (back, from_guest) = thread::spawn(move || {
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        // The guest hashes the 64 MiB before it connects back: minutes on an emulated guest kernel.
        let waited = Instant::now();
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && waited.elapsed() < BOOT => {
                    thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("the guest did not connect back: {e}"),
            }
        };
        stream.set_nonblocking(false).expect("blocking stream");
        stream.set_read_timeout(Some(STALL)).expect("read timeout");
        let start = Instant::now();
        let mut back = Vec::with_capacity(len);
        stream
            .read_to_end(&mut back)
            .expect("receive from the guest");
        (back, start.elapsed())
    })
    .join()
    .expect("receiver");

    let run = vmm.wait(BOOT);
    eprintln!(
        "virtio-net TCP, {mib} MiB: host -> guest {:.2} MiB/s ({:.2?}), guest -> host {:.2} MiB/s ({:.2?})",
        mib_per_s(len, to_guest),
        to_guest,
        mib_per_s(len, from_guest),
        from_guest
    );
    run.expect_success();
    run.expect(
        run.stdout.contains("VMM-TEST-DONE"),
        "checks did not finish",
    );
    run.expect_check("mac_eth0", "52:54:00:12:34:56");
    run.expect_check("mac_eth1", "52:54:00:ab:cd:ef");
    run.expect_check("eth0_addr", "10.0.2.15/24");
    run.expect_check("eth0_mtu", "65520");
    run.expect(
        ping.status.success() && ping_out.contains(" 0% packet loss"),
        &format!("the host pings the guest: {ping_out}"),
    );
    run.expect_check("net_rx_bytes", &len.to_string());
    run.expect_check("net_rx_sha256", &want_sha);
    run.expect_check("net_tx", "0");
    run.expect(
        back.len() == len,
        &format!("{} bytes came back", back.len()),
    );
    run.expect(back == *data, "the bytes that came back are the ones sent");
}

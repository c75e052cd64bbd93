//! Shared host directories (virtio-fs): the share server spoken to as a hostile guest would, raw
//! FUSE on its socket (no KVM); and real Linux guests through `vmm run --share`, `vmm run
//! --root-share /` and `vmm --root-share`. The server needs namespaces: these tests run as root
//! (as CI does).

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{linux_guest, run_vmm, s, status_field, vmm_bin, Run, Scratch};

/// A Linux boot on the development host takes about a minute; the commands after it are slow too.
const BOOT: Duration = Duration::from_secs(400);

const OP_LOOKUP: u32 = 1;
const OP_READLINK: u32 = 5;
const OP_MKNOD: u32 = 8;
const OP_MKDIR: u32 = 9;
const OP_LINK: u32 = 13;
const OP_OPEN: u32 = 14;
const OP_INIT: u32 = 26;
const OP_CREATE: u32 = 35;
const OP_WRITE: u32 = 16;

/// A share server started as vmm starts it (the vmm executable, its socket at descriptor 3),
/// spoken to in raw FUSE.
struct Server {
    child: Child,
    socket: UnixStream,
    unique: u64,
}

impl Server {
    fn start(dir: &Path, mode: &str) -> Server {
        let (ours, theirs) = UnixStream::pair().expect("socket pair");
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new(vmm_bin());
        cmd.args(["__vmm-share-server", s(dir), mode, "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: dup2 onto descriptor 3 in the child; async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start the share server");
        drop(theirs);
        ours.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut server = Server {
            child,
            socket: ours,
            unique: 0,
        };
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while server.socket.read(&mut b).expect("the server's first line") == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        assert_eq!(String::from_utf8_lossy(&line), "ready");
        // A guest that offers FUSE_MAX_PAGES and FUSE_BIG_WRITES is answered with writes of 128
        // pages, not one.
        let offered = (1u32 << 22) | (1 << 5);
        let (err, init) = server.call(
            OP_INIT,
            0,
            &[
                7u32.to_le_bytes(),
                31u32.to_le_bytes(),
                [0; 4],
                offered.to_le_bytes(),
            ]
            .concat(),
        );
        assert_eq!(err, 0, "INIT");
        let field = |at: usize| u32::from_le_bytes(init[at..at + 4].try_into().unwrap());
        assert_eq!(field(12) & offered, offered, "INIT flags");
        assert_eq!(field(20), 128 * 4096, "INIT max_write");
        assert_eq!(field(28) & 0xffff, 128, "INIT max_pages");
        server
    }

    /// Sends request `opcode` on `nodeid` and returns (error, reply payload). Replies to other
    /// requests (a second reply the server sends after an error) are skipped.
    fn call(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> (i32, Vec<u8>) {
        self.unique += 1;
        let len = 40 + body.len();
        let mut req = Vec::with_capacity(8 + len);
        req.extend_from_slice(&(len as u32).to_le_bytes());
        req.extend_from_slice(&(1u32 << 20).to_le_bytes());
        req.extend_from_slice(&(len as u32).to_le_bytes());
        req.extend_from_slice(&opcode.to_le_bytes());
        req.extend_from_slice(&self.unique.to_le_bytes());
        req.extend_from_slice(&nodeid.to_le_bytes());
        req.extend_from_slice(&[0u8; 16]); // uid 0, gid 0, pid, extlen and padding
        req.extend_from_slice(body);
        self.socket.write_all(&req).expect("send a request");
        loop {
            let mut header = [0u8; 16];
            self.socket.read_exact(&mut header).expect("a reply header");
            let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
            let mut payload = vec![0u8; len - 16];
            self.socket.read_exact(&mut payload).expect("a reply");
            if u64::from_le_bytes(header[8..16].try_into().unwrap()) == self.unique {
                return (
                    i32::from_le_bytes(header[4..8].try_into().unwrap()),
                    payload,
                );
            }
        }
    }

    /// LOOKUP of `name` in `parent`: (error, node id).
    fn lookup(&mut self, parent: u64, name: &str) -> (i32, u64) {
        let (err, reply) = self.call(OP_LOOKUP, parent, &cstr(name));
        let node = if err == 0 {
            u64::from_le_bytes(reply[..8].try_into().unwrap())
        } else {
            0
        };
        (err, node)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cstr(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    v
}

/// The share server a started process waits for: its only child.
fn server_of(waiter: u32) -> u32 {
    let start = Instant::now();
    loop {
        let children = std::fs::read_to_string(format!("/proc/{waiter}/task/{waiter}/children"))
            .unwrap_or_default();
        let pids: Vec<u32> = children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.len() == 1 {
            return pids[0];
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "children of {waiter}: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn require_root() -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("VMM_SKIP_JAIL_TESTS").as_deref() == Ok("1"),
        "the share tests need root (the share server makes a mount namespace); run them as root or set VMM_SKIP_JAIL_TESTS=1"
    );
    false
}

#[test]
fn share_server_keeps_a_hostile_guest_inside_its_directory() {
    if !require_root() {
        return;
    }
    let scratch = Scratch::new("share-server");
    let dir = scratch.path("shared");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("inside.txt"), b"inside").unwrap();
    std::fs::create_dir(scratch.path("outside")).unwrap();
    let secret = scratch.path("outside/secret.txt");
    std::fs::write(&secret, b"SECRET").unwrap();
    std::os::unix::fs::symlink(&secret, dir.join("abs")).unwrap();
    std::os::unix::fs::symlink("../outside/secret.txt", dir.join("rel")).unwrap();
    let prog = dir.join("setuid-prog");
    std::fs::write(&prog, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o4755)).unwrap();

    let mut srv = Server::start(&dir, "rw");
    // The process started waits for the server, its only child, and is filtered too.
    let waiter = srv.child.id();
    assert_eq!(status_field(waiter, "Seccomp"), "2");
    let pid = server_of(waiter);
    // pid 1 of a pid namespace of its own.
    let nspid = status_field(pid, "NSpid");
    assert!(nspid.ends_with("\t1"), "NSpid {nspid}");
    // Confined: its own mount namespace, seccomp, no_new_privs, six capabilities.
    let own_ns = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap(),
        own_ns
    );
    assert_eq!(status_field(pid, "Seccomp"), "2");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    // CHOWN, DAC_OVERRIDE, FOWNER, SETGID, SETUID; not FSETID (set-uid kept on write),
    // DAC_READ_SEARCH (file handles),
    // MKNOD, SYS_ADMIN.
    assert_eq!(status_field(pid, "CapBnd"), "00000000000000cb");
    assert_eq!(status_field(pid, "CapEff"), "00000000000000cb");

    // Its handle table is the /proc/self/fd of a procfs of its own pid namespace, where it is
    // pid 1: `..` from there reaches no host process and no /proc/sys.
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert!(fds.iter().any(|f| f == "/1/fd"), "fds {fds:?}");
    assert!(!fds.iter().any(|f| f.starts_with("/proc")), "fds {fds:?}");

    let (err, inside) = srv.lookup(1, "inside.txt");
    assert_eq!(err, 0);
    // `..` of the top is the top.
    let (err, up) = srv.lookup(1, "..");
    assert_eq!(err, 0, "lookup ..");
    assert_eq!(srv.lookup(up, "inside.txt").0, 0, ".. is still the share");
    assert_eq!(srv.lookup(up, "outside").0, -libc::ENOENT);
    let (err, upup) = srv.lookup(up, "..");
    assert_eq!(err, 0);
    assert_eq!(srv.lookup(upup, "outside").0, -libc::ENOENT);
    // A name with a slash is no path.
    assert_ne!(srv.lookup(1, "../outside").0, 0);
    // Symbolic links are served as links, never followed.
    for link in ["abs", "rel"] {
        let (err, node) = srv.lookup(1, link);
        assert_eq!(err, 0, "lookup {link}");
        let (err, _) = srv.call(OP_OPEN, node, &[0u8; 8]);
        assert_ne!(err, 0, "OPEN of symbolic link {link} must not follow it");
        let (err, target) = srv.call(OP_READLINK, node, &[]);
        assert_eq!(err, 0);
        assert!(String::from_utf8_lossy(&target).contains("secret.txt"));
    }
    // A set-uid create leaves no set-uid file on the host.
    let create = [
        (libc::O_WRONLY as u32).to_le_bytes(),
        (libc::S_IFREG | 0o4755).to_le_bytes(),
        0u32.to_le_bytes(),
        0u32.to_le_bytes(),
    ]
    .concat();
    let (err, _) = srv.call(OP_CREATE, 1, &[create, cstr("suid")].concat());
    assert_eq!(err, 0, "CREATE");
    let mode = std::fs::metadata(dir.join("suid"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755, "set-uid bit cleared: {mode:o}");
    // Rewriting a set-uid program clears the bit (the server has no CAP_FSETID).
    let (err, node) = srv.lookup(1, "setuid-prog");
    assert_eq!(err, 0);
    let open_trunc = [
        ((libc::O_WRONLY | libc::O_TRUNC) as u32).to_le_bytes(),
        0u32.to_le_bytes(),
    ]
    .concat();
    let (err, open) = srv.call(OP_OPEN, node, &open_trunc);
    assert_eq!(err, 0, "OPEN for writing");
    let fh = u64::from_le_bytes(open[..8].try_into().unwrap());
    let data = b"#!/bin/sh\nid\n";
    let write = [
        fh.to_le_bytes().to_vec(),
        0u64.to_le_bytes().to_vec(),
        (data.len() as u32).to_le_bytes().to_vec(),
        [0u8; 20].to_vec(),
        data.to_vec(),
    ]
    .concat();
    assert_eq!(srv.call(OP_WRITE, node, &write).0, 0, "WRITE");
    let meta = std::fs::metadata(dir.join("setuid-prog")).unwrap();
    assert_eq!(std::fs::read(dir.join("setuid-prog")).unwrap(), data);
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o755,
        "set-uid bit cleared by the write"
    );
    // No device nodes.
    let mknod = [
        (libc::S_IFBLK | 0o666).to_le_bytes(),
        (8u32 << 8).to_le_bytes(),
        0u32.to_le_bytes(),
        0u32.to_le_bytes(),
    ]
    .concat();
    assert_eq!(
        srv.call(OP_MKNOD, 1, &[mknod, cstr("sda")].concat()).0,
        -libc::EPERM
    );
    // Hard links stay inside: only the share's own inodes can be named.
    let (err, _) = srv.call(
        OP_LINK,
        1,
        &[inside.to_le_bytes().to_vec(), cstr("hard")].concat(),
    );
    assert_eq!(err, 0);
    assert_eq!(std::fs::read(dir.join("hard")).unwrap(), b"inside");
    drop(srv);
    assert_eq!(std::fs::read(&secret).unwrap(), b"SECRET");
    assert_eq!(
        std::fs::read_dir(scratch.path("outside")).unwrap().count(),
        1,
        "nothing appeared outside the share"
    );

    // readonly: every write refused by the server's read-only mount.
    let mut ro = Server::start(&dir, "ro");
    let create = [
        (libc::O_WRONLY as u32).to_le_bytes(),
        (libc::S_IFREG | 0o644).to_le_bytes(),
        0u32.to_le_bytes(),
        0u32.to_le_bytes(),
    ]
    .concat();
    assert_eq!(
        ro.call(OP_CREATE, 1, &[create, cstr("new")].concat()).0,
        -libc::EROFS
    );
    let mkdir = [0o755u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
    assert_eq!(
        ro.call(OP_MKDIR, 1, &[mkdir, cstr("d")].concat()).0,
        -libc::EROFS
    );
    let (_, node) = ro.lookup(1, "inside.txt");
    let open_rw = [(libc::O_RDWR as u32).to_le_bytes(), 0u32.to_le_bytes()].concat();
    assert_eq!(ro.call(OP_OPEN, node, &open_rw).0, -libc::EROFS);
    assert!(!dir.join("new").exists() && !dir.join("d").exists());
}

#[test]
fn a_share_that_cannot_be_served_is_one_error_line() {
    if !require_root() {
        return;
    }
    let scratch = Scratch::new("share-missing");
    let missing = scratch.path("nope");
    let file = scratch.file("file", b"x");
    for (share, why) in [
        (format!("{},tag=x", s(&missing)), "cannot open"),
        (format!("{file},tag=x"), "is not a directory"),
    ] {
        let run = run_vmm(
            &["--kernel", test_guests::ECHO_CMDLINE, "--share", &share],
            Duration::from_secs(30),
        );
        run.expect(run.code == Some(1), "exit 1");
        run.expect(
            run.stderr.trim().lines().count() == 1 && run.stderr.contains(why),
            &format!("one line saying '{why}'"),
        );
    }
    for (bad, why) in [
        ("dir,tag=", "a tag is 1 to 36 bytes"),
        ("dir,tag=a b", "a tag is 1 to 36 bytes"),
        ("dir:relative", "an absolute path"),
        ("dir,size=1", "unknown share option"),
        ("tag=x", "does not start with the host directory"),
    ] {
        let run = run_vmm(
            &["--kernel", test_guests::ECHO_CMDLINE, "--share", bad],
            Duration::from_secs(30),
        );
        run.expect(run.code == Some(2) && run.stderr.contains(why), why);
    }
    let twice = s(&scratch.0).to_string();
    let run = run_vmm(
        &[
            "--kernel",
            test_guests::ECHO_CMDLINE,
            "--share",
            &format!("{twice},tag=a"),
            "--share",
            &format!("{twice},tag=a"),
        ],
        Duration::from_secs(30),
    );
    run.expect(
        run.code == Some(1) && run.stderr.contains("two shares are tagged 'a'"),
        "duplicate tag refused",
    );
}

/// The pids of share servers serving `dir`.
fn servers_of(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if args.get(1) == Some(&&b"__vmm-share-server"[..])
            && args.get(2) == Some(&s(dir).as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

fn sha256(path: &Path) -> String {
    let out = common::tool("sha256sum", &[s(path)]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn listing(dir: &Path) -> Vec<(String, u64, u32)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.size(),
                m.mode(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn share_files_both_ways_readonly_escapes_and_a_server_that_dies() {
    require_kvm!();
    if !require_root() {
        return;
    }
    let guest = linux_guest();
    let mib: usize = std::env::var("VMM_SHARE_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    // Room for the guest to move and hash the files on top of a boot: its copies are slow on a
    // software-assisted KVM host (DESIGN.md, "Shared directories").
    let limit = BOOT + Duration::from_secs(8 * mib as u64);
    let scratch = Scratch::new("share-guest");
    let (rw, ro, doomed, outside) = (
        scratch.path("rw"),
        scratch.path("ro"),
        scratch.path("doomed"),
        scratch.path("outside"),
    );
    for d in [&rw, &ro, &doomed, &outside] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(rw.join("hello.txt"), b"from the host\n").unwrap();
    std::fs::write(rw.join("unlink-me"), b"x").unwrap();
    let host_big: Vec<u8> = (0..mib << 20).map(|i| (i * 7 + i / 4093) as u8).collect();
    std::fs::write(rw.join("host-big"), &host_big).unwrap();
    std::fs::write(ro.join("keep.txt"), b"keep\n").unwrap();
    std::fs::write(doomed.join("f"), b"doomed\n").unwrap();
    std::fs::write(outside.join("secret.txt"), b"SECRET\n").unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), rw.join("abs")).unwrap();
    std::os::unix::fs::symlink("../outside/secret.txt", rw.join("rel")).unwrap();
    let ro_before = listing(&ro);
    let outside_before = listing(&outside);

    let script = format!(
        r#"
cd /tmp/rw || exit 9
echo "CHECK read=$(cat hello.txt)"
echo "from the guest" > made.txt && mkdir newdir && echo moved > newdir/f && mv newdir/f newdir/g && rm unlink-me && chmod 600 made.txt && echo "CHECK writes=done"
echo "CHECK host_big=$(sha256sum host-big | cut -d' ' -f1)"
dd if=/dev/urandom of=/dev/shm/seed bs=64k count=16 2>/dev/null
i=0; while [ $i -lt {mib} ]; do cat /dev/shm/seed; i=$((i+1)); done | dd of=guest-big bs=1M iflag=fullblock 2>/dev/null
echo "CHECK guest_big=$(sha256sum guest-big | cut -d' ' -f1)"
if echo x > /tmp/ro/new 2>/dev/null || rm /tmp/ro/keep.txt 2>/dev/null || mkdir /tmp/ro/d 2>/dev/null; then echo "CHECK ro=written"; else echo "CHECK ro=refused"; fi
echo "CHECK ro_read=$(cat /tmp/ro/keep.txt)"
cat abs rel 2>/dev/null | grep -q SECRET && echo "CHECK links=escaped" || echo "CHECK links=inside"
ln /etc/hostname hard 2>/dev/null && echo "CHECK hardlink=made" || echo "CHECK hardlink=refused"
echo pwned > ../../outside-probe 2>/dev/null; ls .. | grep -q outside && echo "CHECK dotdot=escaped" || echo "CHECK dotdot=inside"
cat /tmp/doomed/f >/dev/null && echo ready > ready
i=0
while cat /tmp/doomed/f >/dev/null 2>&1 && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done
cat /tmp/doomed/f 2>&1 | head -1 | sed 's/^/CHECK doomed=/'
echo "CHECK end=ok"
"#,
    );
    let cmd = common::vmm_command(&[
        "run",
        "--kernel",
        s(&guest.vmlinux),
        "--disk",
        &format!("{},readonly=on", s(&guest.rootfs)),
        "--share",
        &format!("{}:/tmp/rw", s(&rw)),
        "--share",
        &format!("{}:/tmp/ro,readonly=on", s(&ro)),
        "--share",
        &format!("{}:/tmp/doomed,tag=doomed", s(&doomed)),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let start = Instant::now();
    let running = std::thread::spawn(move || common::run_command(cmd, limit));
    // The guest says when it has used the doomed share; then its server is killed.
    while !rw.join("ready").exists() {
        if running.is_finished() || start.elapsed() > limit {
            let run = running.join().unwrap();
            panic!("the guest never got to the doomed share\n{run}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The process vmm started and the server it waits for (pid 1 of its namespace): the server.
    let pids = servers_of(&doomed);
    assert_eq!(
        pids.len(),
        2,
        "a waiter and a server for the doomed share: {pids:?}"
    );
    let server = pids
        .iter()
        .copied()
        .find(|&p| status_field(p, "NSpid").ends_with("\t1"))
        .expect("the server among them");
    // SAFETY: kill with a pid we just found and a signal number.
    unsafe { libc::kill(server as i32, libc::SIGKILL) };
    let run: Run = running.join().unwrap();
    run.expect_success();
    run.expect_check("read", "from the host");
    run.expect_check("writes", "done");
    run.expect_check("host_big", &sha256(&rw.join("host-big")));
    run.expect_check("guest_big", &sha256(&rw.join("guest-big")));
    run.expect_check("ro", "refused");
    run.expect_check("ro_read", "keep");
    run.expect_check("links", "inside");
    run.expect_check("hardlink", "refused");
    run.expect_check("dotdot", "inside");
    let doomed_said = run.check("doomed").unwrap_or_default();
    run.expect(
        doomed_said.contains("I/O error") || doomed_said.contains("Input/output"),
        "an I/O error in the guest once the server died",
    );
    run.expect_check("end", "ok");
    run.expect(
        run.stderr
            .contains("virtio-fs 'doomed': the share's server closed its socket"),
        "vmm says the server ended",
    );
    assert_eq!(
        std::fs::metadata(rw.join("guest-big")).unwrap().len(),
        (mib as u64) << 20
    );
    assert_eq!(
        std::fs::read(rw.join("made.txt")).unwrap(),
        b"from the guest\n"
    );
    assert_eq!(std::fs::read(rw.join("newdir/g")).unwrap(), b"moved\n");
    assert!(!rw.join("newdir/f").exists() && !rw.join("unlink-me").exists());
    let mode = std::fs::metadata(rw.join("made.txt")).unwrap().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(listing(&ro), ro_before, "the read-only share is unchanged");
    assert_eq!(
        listing(&outside),
        outside_before,
        "nothing outside the shares changed"
    );
    assert!(!scratch.path("outside-probe").exists());
    assert!(servers_of(&rw).is_empty(), "vmm stopped its servers");
}

/// `uname -v` and /etc/debian_version of this host.
fn host_facts() -> (String, String) {
    let out = common::tool("uname", &["-v"]);
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let debian = std::fs::read_to_string("/etc/debian_version")
        .unwrap_or_default()
        .trim()
        .to_string();
    (version, debian)
}

#[test]
fn run_root_share_runs_the_hosts_programs_on_the_guest_kernel() {
    require_kvm!();
    if !require_root() {
        return;
    }
    let guest = linux_guest();
    let probe = format!("/etc/vmm-root-share-probe-{}", std::process::id());
    let script = format!(
        r#"echo "CHECK kernel=$(uname -v)"; echo "CHECK debian=$(cat /etc/debian_version)"; echo guest > {probe} && echo "CHECK probe=$(cat {probe})"; uname -a"#
    );
    let run = run_vmm(
        &[
            "run",
            "--kernel",
            s(&guest.vmlinux),
            "--root-share",
            "/",
            "--",
            "sh",
            "-c",
            &script,
        ],
        BOOT,
    );
    run.expect_success();
    let (host_kernel, host_debian) = host_facts();
    let kernel = run.check("kernel").unwrap_or_default();
    run.expect(
        !kernel.is_empty() && kernel != host_kernel,
        "the guest's own kernel, not the host's",
    );
    run.expect_check("debian", &host_debian);
    run.expect_check("probe", "guest");
    assert!(
        !Path::new(&probe).exists(),
        "a write to the read-only root share stays in the guest's overlay"
    );
}

#[test]
fn vmm_root_share_boots_the_guests_init_from_a_host_directory() {
    require_kvm!();
    if !require_root() {
        return;
    }
    let guest = linux_guest();
    let scratch = Scratch::new("root-share-init");
    let init = scratch.path("init.sh");
    std::fs::write(
        &init,
        "#!/bin/sh\necho \"ROOT-SHARE-INIT pid=$$ root=$(grep ' / ' /proc/mounts | cut -d' ' -f3)\"\necho o > /proc/sysrq-trigger\nsleep 60\n",
    )
    .unwrap();
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = run_vmm(
        &[
            "--kernel",
            s(&guest.vmlinux),
            "--root-share",
            "/",
            "--share",
            &format!("{}:/vmm-test", s(&scratch.0)),
            "--cmdline",
            "console=ttyS0 reboot=k panic=1 pci=off vmm.init=/vmm-test/init.sh",
        ],
        BOOT,
    );
    run.expect_success();
    run.expect(
        run.stdout.contains("ROOT-SHARE-INIT pid=1 root=overlay"),
        "the guest's init ran as PID 1 on the overlay over the shared root",
    );
}

#[test]
fn a_vm_with_a_share_refuses_a_snapshot_and_runs_on() {
    require_kvm!();
    if !require_root() {
        return;
    }
    let scratch = Scratch::new("share-snapshot");
    let sock = scratch.path("api.sock");
    let share = format!("{},tag=work", s(&scratch.0));
    let mut vmm = common::Running::start(&[
        "--kernel",
        test_guests::PARK,
        "--api-socket",
        s(&sock),
        "--share",
        &share,
        "--shutdown-timeout",
        "100ms",
    ]);
    vmm.wait_for_line("parked", Duration::from_secs(60));
    let (code, _, _) = common::ctl(&sock, &["pause"]);
    assert_eq!(code, 0);
    let dir = scratch.path("snap");
    let (code, out, err) = common::ctl(&sock, &["snapshot", s(&dir)]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("shares") && err.contains("tag 'work'") && err.trim().lines().count() == 1,
        "{err}"
    );
    assert!(!dir.join("state").exists() && !dir.join("memory").exists());
    let (code, _, _) = common::ctl(&sock, &["resume"]);
    assert_eq!(code, 0, "the VM goes on");
    assert!(vmm.is_running());
}

//! Linux on a qcow2 overlay of a raw base (both made here, the overlay by qemu-img), through
//! `vmm run`: the guest's writes land in the overlay, the base's sha256 never changes, and
//! `qemu-img check` passes after a clean run and after kill -9 mid-write, with every file the
//! guest saw synced there (the data-safety promise holds for qcow2). Takes minutes on hosts
//! without hardware virtualization; needs qemu-img (qemu-utils) and e2fsprogs.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{linux_guest, qcow2_overlay, qemu_img_check, s, tool, vmm_bin, Scratch};

/// A Linux boot on the development host takes about a minute; the agent's answer comes after.
const BOOT: Duration = Duration::from_secs(600);

fn sha256_of(path: &str) -> String {
    let out = tool("sha256sum", &[path]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The overlay as a raw ext4 image with its journal replayed (e2fsck -fy; exit 0 or 1 is a
/// clean or repaired file system).
fn overlay_as_ext4(scratch: &Scratch, overlay: &str, name: &str) -> String {
    let raw = scratch.path(name);
    tool(
        "qemu-img",
        &["convert", "-f", "qcow2", "-O", "raw", overlay, s(&raw)],
    );
    let fsck = Command::new("e2fsck")
        .args(["-fy", s(&raw)])
        .output()
        .expect("e2fsck (e2fsprogs)");
    assert!(
        matches!(fsck.status.code(), Some(0 | 1)),
        "e2fsck after the run: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    s(&raw).to_string()
}

/// The sha256 of `file` in an ext4 image (dumped with debugfs).
fn file_sha256(scratch: &Scratch, image: &str, file: &str) -> String {
    let out = scratch.path("dumped");
    let _ = std::fs::remove_file(&out);
    tool(
        "debugfs",
        &["-R", &format!("dump {file} {}", s(&out)), image],
    );
    assert!(out.exists(), "{file} is not in the image");
    sha256_of(s(&out))
}

#[test]
fn boot_linux_qcow2_overlay_writes_sync_and_survive_kill9() {
    require_kvm!();
    let guest = linux_guest();
    let scratch = Scratch::new("linux-qcow2");
    let base = scratch.path("base.ext4");
    std::fs::copy(&guest.rootfs, &base).expect("copy rootfs");
    let base = s(&base).to_string();
    let base_sha = sha256_of(&base);
    let overlay = scratch.path("overlay.qcow2");
    let overlay = s(&overlay).to_string();
    qcow2_overlay("base.ext4", "raw", &overlay);
    let vmlinux = s(&guest.vmlinux).to_string();

    // Phase 1: a clean run writes 2 MiB and syncs; the guest prints its sha256.
    let out = Command::new(vmm_bin())
        .args(["run", "--kernel", &vmlinux, "--disk", &overlay, "--"])
        .args([
            "sh",
            "-c",
            "dd if=/dev/urandom of=/qcow2-data bs=64k count=32 2>/dev/null && sync && sha256sum /qcow2-data",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("spawn vmm run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "vmm run: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let guest_sha = stdout
        .split_whitespace()
        .next()
        .expect("the guest's sha256")
        .to_string();
    assert_eq!(sha256_of(&base), base_sha, "the base changed");
    qemu_img_check(&overlay);
    let ext4 = overlay_as_ext4(&scratch, &overlay, "after-run.ext4");
    assert_eq!(file_sha256(&scratch, &ext4, "/qcow2-data"), guest_sha);
    std::fs::remove_file(&ext4).unwrap();

    // Phase 2: the guest writes and syncs 1 MiB files in a loop, reporting each; vmm is killed
    // with SIGKILL while it writes the next.
    let mut child = Command::new(vmm_bin())
        .args(["run", "--kernel", &vmlinux, "--disk", &overlay, "--"])
        .args([
            "sh",
            "-c",
            "i=0; while :; do dd if=/dev/urandom of=/f$i bs=64k count=16 2>/dev/null; sync; sha256sum /f$i; i=$((i+1)); done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vmm run");
    let reader = BufReader::new(child.stdout.take().expect("stdout"));
    let (tx, rx) = mpsc::channel::<(String, String)>();
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            let mut words = line.split_whitespace();
            if let (Some(sha), Some(file)) = (words.next(), words.next()) {
                let _ = tx.send((file.to_string(), sha.to_string()));
            }
        }
    });
    let mut synced = Vec::new();
    while synced.len() < 3 {
        match rx.recv_timeout(BOOT) {
            Ok(entry) => synced.push(entry),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the guest reported {} synced files, then nothing: {e}",
                    synced.len()
                );
            }
        }
    }
    // Mid-write: the loop is in its next dd.
    std::thread::sleep(Duration::from_millis(500));
    child.kill().expect("SIGKILL vmm");
    let status = child.wait().expect("wait for vmm");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "vmm ended before the kill: {status:?}"
    );
    while let Ok(entry) = rx.try_recv() {
        synced.push(entry);
    }
    assert_eq!(sha256_of(&base), base_sha, "the base changed");
    qemu_img_check(&overlay);
    let ext4 = overlay_as_ext4(&scratch, &overlay, "after-kill.ext4");
    for (file, sha) in &synced {
        assert_eq!(
            &file_sha256(&scratch, &ext4, file),
            sha,
            "{file}, synced before the kill, is not intact"
        );
    }
    assert_eq!(file_sha256(&scratch, &ext4, "/qcow2-data"), guest_sha);
}

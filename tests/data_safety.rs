//! kill -9 data safety: the tiny `blk_writer` guest writes numbered 4 KiB records to a virtio-blk
//! disk, FLUSHes after each and reports each flushed record on the serial port; the test kills
//! the VMM with SIGKILL mid-stream, then checks the image: every record the guest saw flushed is
//! there, whole and in place; at most the one record after them (written, not yet reported) may
//! also be there; nothing else changed, and the size is the same. Needs KVM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{qcow2_overlay, qemu_img, vmm_bin, Scratch};
use test_guests::{writer_record, BLK_WRITER};

const BLOCK: usize = 4096;
const BLOCKS: usize = 1024; // a 4 MiB image
const WAIT: Duration = Duration::from_secs(120);

/// What the image holds before the guest writes: unique per byte position, unlike any record.
fn filler() -> Vec<u8> {
    (0..BLOCKS * BLOCK)
        .map(|i| ((i / BLOCK) as u8).wrapping_mul(13) ^ (i as u8) ^ 0x5a)
        .collect()
}

/// Boots the writer, SIGKILLs vmm once the guest has reported `kill_after` flushed records, and
/// returns the records reported on complete lines.
fn write_and_kill(image: &str, kill_after: u64) -> Vec<u64> {
    let mut child = Command::new(vmm_bin())
        .args(["--kernel", BLK_WRITER, "--disk", image])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vmm");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let (tx, rx) = mpsc::channel::<u64>();
    let reader = thread::spawn(move || {
        let mut all = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            match out.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            // A line cut short by the kill does not count.
            if line.last() != Some(&b'\n') {
                break;
            }
            let text = String::from_utf8_lossy(&line);
            if let Some(n) = text
                .trim_end()
                .strip_prefix("flushed=")
                .and_then(test_guests::parse_num)
            {
                all.push(n);
                let _ = tx.send(n);
            }
        }
        all
    });
    loop {
        match rx.recv_timeout(WAIT) {
            Ok(n) if n + 1 >= kill_after => break,
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the guest stopped reporting flushed records before {kill_after}: {e}");
            }
        }
    }
    child.kill().expect("SIGKILL vmm");
    let status = child.wait().expect("wait for vmm");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "vmm was killed mid-stream, not finished: {status:?}"
    );
    reader.join().expect("stdout reader")
}

fn kill_mid_stream(kill_after: u64) {
    kill_mid_stream_on(kill_after, false);
}

/// `qcow2`: the guest's disk is a qcow2 overlay (made by qemu-img) of the raw image, which
/// must not change; afterwards `qemu-img check` passes on the overlay (leaked clusters, which a
/// kill may leave, allowed) and the records are checked in what it reads as.
fn kill_mid_stream_on(kill_after: u64, qcow2: bool) {
    require_kvm!();
    let scratch = Scratch::new(&format!(
        "kill9-{kill_after}{}",
        if qcow2 { "-qcow2" } else { "" }
    ));
    let before = filler();
    let base = scratch.file("disk.img", &before);
    let image = if qcow2 {
        let overlay = scratch.path("overlay.qcow2");
        qcow2_overlay("disk.img", "raw", common::s(&overlay));
        common::s(&overlay).to_string()
    } else {
        base.clone()
    };
    let flushed = write_and_kill(&image, kill_after);
    let after_path = if qcow2 {
        assert!(
            std::fs::read(&base).unwrap() == before,
            "the base image changed"
        );
        let check = Command::new("qemu-img")
            .args(["check", "-f", "qcow2", &image])
            .output()
            .expect("qemu-img not found: this test needs it (apt-get install qemu-utils)");
        assert!(
            matches!(check.status.code(), Some(0 | 3)),
            "qemu-img check after kill -9: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let raw = scratch.path("after.raw");
        qemu_img(&[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            &image,
            common::s(&raw),
        ]);
        common::s(&raw).to_string()
    } else {
        image.clone()
    };
    let image = after_path;

    let last = *flushed.last().expect("some records flushed");
    assert!(last + 1 >= kill_after, "killed after record {last}");
    assert_eq!(
        flushed,
        (0..=last).collect::<Vec<_>>(),
        "records are reported in order"
    );
    let after = std::fs::read(&image).expect("read the image");
    assert_eq!(after.len(), before.len(), "the image changed size");
    let block = |b: &[u8], n: usize| b[n * BLOCK..(n + 1) * BLOCK].to_vec();
    for n in 0..BLOCKS {
        let got = block(&after, n);
        let record = writer_record(n as u64);
        if n as u64 <= last {
            assert!(got == record, "flushed record {n} is not in the image");
        } else if n as u64 == last + 1 {
            // Written and maybe flushed, but not reported before the kill: either state is fine,
            // nothing in between.
            assert!(
                got == record || got == block(&before, n),
                "record {n} (in flight at the kill) is torn"
            );
        } else {
            assert!(
                got == block(&before, n),
                "block {n}, never written by the guest, changed"
            );
        }
    }
    eprintln!(
        "kill -9 after {} flushed records: all in the image",
        last + 1
    );
}

/// The data-safety promise on a qcow2 overlay of a raw base: what the guest saw flushed (data
/// and the qcow2 metadata that maps it) survives kill -9.
#[test]
fn boot_kill9_qcow2_overlay_keeps_every_flushed_record() {
    kill_mid_stream_on(60, true);
}

#[test]
fn boot_kill9_early_keeps_every_flushed_record() {
    kill_mid_stream(5);
}

#[test]
fn boot_kill9_mid_stream_keeps_every_flushed_record() {
    kill_mid_stream(120);
}

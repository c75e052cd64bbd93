//! qcow2 images on real KVM with the tiny virtio-blk driver (crates/test-guests/guests/virtio_blk.c):
//! an image and an overlay of a raw base made by qemu-img, `snapshot=on` over qcow2, and two VMs
//! at once on one base. Afterwards `qemu-img check` passes and the base is byte for byte what it
//! was. A test that needs qemu-img and does not find it fails saying so.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{qcow2_overlay, qemu_img, qemu_img_check, run_vmm, tool, Run, Scratch};
use test_guests::Report;

const TIMEOUT: Duration = Duration::from_secs(30);
const MIB: usize = 1 << 20;

/// The guest-visible bytes of a qcow2 image, as qemu-img reads them.
fn guest_bytes(scratch: &Scratch, image: &str) -> Vec<u8> {
    let out = scratch.path("converted.raw");
    let out = out.to_str().unwrap();
    qemu_img(&["convert", "-f", "qcow2", "-O", "raw", image, out]);
    let bytes = std::fs::read(out).unwrap();
    std::fs::remove_file(out).unwrap();
    bytes
}

/// A 1 MiB raw base starting with HELLO-SECTOR-0!! (what the tiny driver reads first).
fn raw_base(scratch: &Scratch, name: &str) -> String {
    let mut data = b"HELLO-SECTOR-0!!".to_vec();
    data.resize(MIB, 0);
    scratch.file(name, &data)
}

fn report(run: &Run) -> Report {
    run.finished_report()
}

fn num(run: &Run, r: &Report, key: &str) -> u64 {
    r.num(key)
        .unwrap_or_else(|| panic!("guest did not report {key}\n{run}"))
}

/// The tiny driver's requests all answered as on a writable 1 MiB disk whose sector 0 starts
/// with `sector0`.
fn expect_driver_happy(run: &Run, sector0: &str) {
    let r = report(run);
    run.expect(num(run, &r, "capacity") == (MIB / 512) as u64, "capacity");
    run.expect(num(run, &r, "read_status") == 0, "read failed");
    run.expect(r.get("sector0") == Some(sector0), "read wrong data");
    for key in [
        "write_status",
        "flush_status",
        "discard_status",
        "zeroes_status",
    ] {
        run.expect(num(run, &r, key) == 0, &format!("{key} not OK"));
    }
    run.expect(
        r.get("sector1") == Some("WRITTEN-BY-GUEST"),
        "write not read back",
    );
    run.expect(
        num(run, &r, "discarded_zero") == 1,
        "discarded sector not zero",
    );
    run.expect(num(run, &r, "zeroed_zero") == 1, "zeroed sector not zero");
    run.expect(num(run, &r, "final_status") == 0xf, "device marked failed");
}

/// What the driver leaves on its disk: sector 1 written, sector 2 zeroed, the second half
/// discarded (zeroes).
fn expect_driver_writes(bytes: &[u8], run: &Run) {
    assert_eq!(bytes.len(), MIB, "{run}");
    assert_eq!(&bytes[512..528], b"WRITTEN-BY-GUEST", "{run}");
    assert!(bytes[1024..1536].iter().all(|b| *b == 0), "{run}");
    assert!(bytes[MIB / 2..].iter().all(|b| *b == 0), "{run}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn boot_qcow2_image_made_by_qemu_img() {
    require_kvm!();
    let scratch = Scratch::new("qcow2-image");
    let base = raw_base(&scratch, "base.img");
    // A compressed image: the driver reads a compressed cluster, writes go to new clusters.
    let image = scratch.path("disk.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        &base,
        s(&image),
    ]);
    let run = run_vmm(
        &["--kernel", test_guests::VIRTIO_BLK, "--disk", s(&image)],
        TIMEOUT,
    );
    expect_driver_happy(&run, "HELLO-SECTOR-0!!");
    qemu_img_check(s(&image));
    let bytes = guest_bytes(&scratch, s(&image));
    expect_driver_writes(&bytes, &run);
    assert_eq!(&bytes[..16], b"HELLO-SECTOR-0!!", "{run}");
}

#[test]
fn boot_qcow2_overlay_of_a_raw_base_writes_only_the_overlay() {
    require_kvm!();
    let scratch = Scratch::new("qcow2-overlay");
    let base = raw_base(&scratch, "base.img");
    let before = std::fs::read(&base).unwrap();
    let overlay = scratch.path("overlay.qcow2");
    // A relative backing name, resolved against the overlay's directory.
    qcow2_overlay("base.img", "raw", s(&overlay));
    let run = run_vmm(
        &[
            "--kernel",
            test_guests::VIRTIO_BLK,
            "--disk",
            &format!("path={},format=qcow2", s(&overlay)),
        ],
        TIMEOUT,
    );
    expect_driver_happy(&run, "HELLO-SECTOR-0!!");
    assert!(
        std::fs::read(&base).unwrap() == before,
        "the base changed\n{run}"
    );
    qemu_img_check(s(&overlay));
    let bytes = guest_bytes(&scratch, s(&overlay));
    expect_driver_writes(&bytes, &run);
    assert_eq!(&bytes[..16], b"HELLO-SECTOR-0!!", "{run}");
}

#[test]
fn boot_qcow2_snapshot_on_leaves_the_overlay_and_the_base() {
    require_kvm!();
    let scratch = Scratch::new("qcow2-snapshot");
    let base = raw_base(&scratch, "base.img");
    let overlay = scratch.path("overlay.qcow2");
    qcow2_overlay("base.img", "raw", s(&overlay));
    let (base_before, overlay_before) = (
        std::fs::read(&base).unwrap(),
        std::fs::read(&overlay).unwrap(),
    );
    let tmp = scratch.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut cmd = common::vmm_command(&[
        "--kernel",
        test_guests::VIRTIO_BLK,
        "--disk",
        &format!("{},snapshot=on", s(&overlay)),
    ]);
    cmd.env("TMPDIR", &tmp);
    let run = common::run_command(cmd, TIMEOUT);
    expect_driver_happy(&run, "HELLO-SECTOR-0!!");
    assert!(
        std::fs::read(&base).unwrap() == base_before,
        "the base changed\n{run}"
    );
    assert!(
        std::fs::read(&overlay).unwrap() == overlay_before,
        "the qcow2 image changed\n{run}"
    );
    let mut names: Vec<_> = std::fs::read_dir(&scratch.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["base.img", "overlay.qcow2", "tmp"], "{run}");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "{run}");
}

#[test]
fn boot_qcow2_two_vms_on_one_base_see_only_their_own_writes() {
    require_kvm!();
    let scratch = Scratch::new("qcow2-two");
    let base = raw_base(&scratch, "base.img");
    let before = std::fs::read(&base).unwrap();
    let overlays: Vec<String> = ["a", "b"]
        .iter()
        .map(|n| {
            let p = scratch.path(&format!("{n}.qcow2"));
            qcow2_overlay("base.img", "raw", s(&p));
            // Each overlay's own sector 0: "AAAA…" in a, "BBBB…" in b.
            let pattern = format!("write -P 0x{:x} 0 512", if *n == "a" { 0x41 } else { 0x42 });
            tool("qemu-io", &["-f", "qcow2", "-c", &pattern, s(&p)]);
            s(&p).to_string()
        })
        .collect();
    // Both at once: 20 requests/s each keeps both running for about a second.
    let runs: Vec<Run> = std::thread::scope(|scope| {
        let handles: Vec<_> = overlays
            .iter()
            .map(|o| {
                scope.spawn(move || {
                    run_vmm(
                        &[
                            "--kernel",
                            test_guests::VIRTIO_BLK,
                            "--disk",
                            &format!("{o},iops=20,iops_burst=1"),
                        ],
                        TIMEOUT,
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (run, own) in runs.iter().zip(["AAAAAAAAAAAAAAAA", "BBBBBBBBBBBBBBBB"]) {
        expect_driver_happy(run, own);
    }
    assert!(std::fs::read(&base).unwrap() == before, "the base changed");
    for (overlay, (run, own)) in overlays.iter().zip(runs.iter().zip([b'A', b'B'])) {
        qemu_img_check(overlay);
        let bytes = guest_bytes(&scratch, overlay);
        expect_driver_writes(&bytes, run);
        assert!(bytes[..512].iter().all(|b| *b == own), "{run}");
    }
}

#[test]
fn boot_qcow2_hostile_image_is_one_error_line() {
    require_kvm!();
    let scratch = Scratch::new("qcow2-hostile");
    let a = scratch.path("a.qcow2");
    let b = scratch.path("b.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "b.qcow2",
        "-F",
        "qcow2",
        s(&a),
        "1M",
    ]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "a.qcow2",
        "-F",
        "qcow2",
        s(&b),
        "1M",
    ]);
    let run = run_vmm(
        &["--kernel", test_guests::VIRTIO_BLK, "--disk", s(&a)],
        TIMEOUT,
    );
    run.expect(run.code == Some(1), "a looping chain did not exit 1");
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    run.expect(errors.len() == 1, "not one error line");
    run.expect(
        errors[0].contains("loops") && errors[0].contains("a.qcow2"),
        "error does not say why",
    );
}

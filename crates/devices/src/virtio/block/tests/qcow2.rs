//! qcow2 images: images and overlays made by qemu-img, driven through the device, checked by
//! qemu-img afterwards; hostile headers and backing chains refused at open.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::virtio::block::format::{check_qcow2_header, HEADER_BYTES};

/// Runs qemu-img; a test that needs it and does not find it fails saying so.
fn qemu_img(args: &[&str]) -> std::process::Output {
    let out = crate::test_util::output(Command::new("qemu-img").args(args)).expect(
        "qemu-img not found: this test needs it (Debian/Ubuntu: apt-get install qemu-utils)",
    );
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `qemu-img check` passes: no corruption (leaked clusters are allowed: exit 3).
fn qemu_img_check(path: &Path) {
    let out = crate::test_util::output(
        Command::new("qemu-img")
            .args(["check", "-U", "-f", "qcow2"])
            .arg(path),
    )
    .expect("qemu-img not found: this test needs it (apt-get install qemu-utils)");
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "qemu-img check {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn dir() -> vmm_sys_util::tempdir::TempDir {
    vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmm-qcow2-").unwrap()
}

/// A qcow2 image of `size` in `dir` (`extra` passed to qemu-img create), as a TempFile.
fn qcow2_in(dir: &Path, name: &str, size: &str, extra: &[&str]) -> (TempFile, PathBuf) {
    let file = TempFile::new_in(dir).unwrap();
    let path = dir.join(name);
    std::fs::rename(file.as_path(), &path).unwrap();
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    args.extend_from_slice(extra);
    let p = path.to_str().unwrap().to_string();
    args.push(&p);
    args.push(size);
    qemu_img(&args);
    (file, path)
}

fn open(
    path: &Path,
    format: Option<DiskFormat>,
    read_only: bool,
    snapshot: bool,
) -> Result<Block, Error> {
    Block::new(BlockConfig {
        format,
        path: path.to_path_buf(),
        read_only,
        id: None,
        snapshot,
        aio: Aio::Sync,
    })
}

fn harness(file: TempFile, path: &Path, snapshot: bool) -> Harness {
    let block = open(path, None, false, snapshot).unwrap();
    Harness::around(file, block, false, DISCARD_FEATURES)
}

fn flush(h: &mut Harness) {
    h.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(h.run(&[hdr(), status()]), (1, VIRTIO_BLK_S_OK));
}

/// The image's guest-visible bytes, as qemu-img reads them.
fn as_raw(path: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("converted.raw");
    // -U: read while the device holds its locks.
    qemu_img(&[
        "convert",
        "-U",
        "-O",
        "raw",
        path.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let v = std::fs::read(&out).unwrap();
    std::fs::remove_file(out).unwrap();
    v
}

#[test]
fn qcow2_image_is_detected_read_written_flushed_and_checks_clean() {
    let d = dir();
    let (file, path) = qcow2_in(d.as_path(), "disk.qcow2", "1M", &[]);
    let mut h = harness(file, &path, false);
    // Capacity is the virtual size, not the file's.
    assert_eq!(h.block.capacity(), 2048);
    assert_eq!(h.read_sectors(0, 4), vec![0u8; 2048]);
    // Writes in two clusters (64 KiB each), one across their boundary.
    h.write_sectors(3, &[0x33; 512]);
    h.write_sectors(127, &[0x7f; 1024]);
    assert_eq!(h.read_sectors(3, 1), vec![0x33; 512]);
    assert_eq!(h.read_sectors(127, 2), vec![0x7f; 1024]);
    flush(&mut h);
    // What the guest flushed is in the file as qemu-img sees it, while the device is open.
    let raw = as_raw(&path, d.as_path());
    assert_eq!(raw.len(), 1 << 20);
    assert_eq!(raw[3 * 512..4 * 512], [0x33; 512]);
    assert_eq!(raw[127 * 512..129 * 512], [0x7f; 1024]);
    qemu_img_check(&path);

    // DISCARD frees the cluster (reads back zeroes); WRITE_ZEROES with and without unmap.
    assert_eq!(
        trim(&mut h, VIRTIO_BLK_T_DISCARD, &[(0, 128, 0)]).1,
        VIRTIO_BLK_S_OK
    );
    assert_eq!(h.read_sectors(3, 1), vec![0u8; 512]);
    assert_eq!(
        trim(&mut h, VIRTIO_BLK_T_WRITE_ZEROES, &[(127, 1, 0)]).1,
        VIRTIO_BLK_S_OK
    );
    assert_eq!(
        trim(&mut h, VIRTIO_BLK_T_WRITE_ZEROES, &[(128, 1, UNMAP)]).1,
        VIRTIO_BLK_S_OK
    );
    assert_eq!(h.read_sectors(127, 2), vec![0u8; 1024]);
    flush(&mut h);
    drop(h);
    qemu_img_check(&path);
    assert_eq!(as_raw(&path, d.as_path()), vec![0u8; 1 << 20]);
}

#[test]
fn qcow2_overlay_of_a_raw_base_writes_the_overlay_only() {
    let d = dir();
    let base = d.as_path().join("base.img");
    let pattern: Vec<u8> = (0..1u32 << 20).map(|i| (i / 7) as u8).collect();
    std::fs::write(&base, &pattern).unwrap();
    // A relative backing name: relative to the overlay's directory.
    let (file, path) = qcow2_in(
        d.as_path(),
        "overlay.qcow2",
        "1M",
        &["-b", "base.img", "-F", "raw"],
    );
    let mut h = harness(file, &path, false);
    assert_eq!(h.read_sectors(0, 8), pattern[..4096]);
    h.write_sectors(2, &[0xaa; 512]);
    let mut want = pattern.clone();
    want[1024..1536].fill(0xaa);
    // The rest of the cluster comes from the base (copy-on-write).
    assert_eq!(h.read_sectors(0, 8), want[..4096]);
    assert_eq!(h.read_sectors(1000, 2), want[1000 * 512..1002 * 512]);
    flush(&mut h);
    // The base is locked as a reader while the overlay is open: a writer is refused.
    let err = open(&base, Some(DiskFormat::Raw), false, false)
        .err()
        .unwrap();
    assert!(matches!(err, Error::DiskLocked { .. }), "{err}");
    drop(h);
    assert_eq!(
        std::fs::read(&base).unwrap(),
        pattern,
        "the base is unchanged"
    );
    qemu_img_check(&path);
    assert_eq!(as_raw(&path, d.as_path()), want);
}

#[test]
fn snapshot_over_qcow2_reads_through_the_qcow2_layer_and_writes_nothing() {
    let d = dir();
    let (file, path) = qcow2_in(d.as_path(), "disk.qcow2", "1M", &[]);
    // Some data in the image first, through a writable device.
    let mut h = harness(file, &path, false);
    h.write_sectors(5, &[0x55; 512]);
    flush(&mut h);
    let Harness { file, block, .. } = h;
    drop(block);
    let before = std::fs::read(&path).unwrap();
    let mut h = harness(file, &path, true);
    assert!(h.block.has_overlay());
    assert_eq!(h.read_sectors(5, 1), vec![0x55; 512]);
    h.write_sectors(4, &[0x44; 1024]);
    let mut want = vec![0u8; 4096];
    want[4 * 512..6 * 512].fill(0x44);
    assert_eq!(h.read_sectors(0, 8), want);
    assert_eq!(
        trim(&mut h, VIRTIO_BLK_T_DISCARD, &[(5, 1, 0)]).1,
        VIRTIO_BLK_S_OK
    );
    assert_eq!(h.read_sectors(5, 1), vec![0u8; 512]);
    flush(&mut h);
    drop(h);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the image is unchanged"
    );
}

#[test]
fn format_option_forces_raw_or_refuses_a_file_that_is_not_qcow2() {
    let d = dir();
    let (_file, path) = qcow2_in(d.as_path(), "disk.qcow2", "1M", &[]);
    let file_len = std::fs::metadata(&path).unwrap().len();
    // format=raw serves the file's own bytes, header included.
    let b = open(&path, Some(DiskFormat::Raw), true, false).unwrap();
    assert_eq!(b.capacity(), file_len / 512);
    let b = open(&path, Some(DiskFormat::Qcow2), true, false).unwrap();
    assert_eq!(b.capacity(), 2048);
    // A raw file named .qcow2 is raw; format=qcow2 on it is an error naming the file.
    let raw = d.as_path().join("raw.qcow2");
    std::fs::write(&raw, vec![0u8; 4096]).unwrap();
    assert_eq!(open(&raw, None, true, false).unwrap().capacity(), 8);
    let err = open(&raw, Some(DiskFormat::Qcow2), true, false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("raw.qcow2") && err.contains("not a qcow2 image"),
        "{err}"
    );
}

/// Opens `path` (detected format) and returns the error's one line.
fn refused(path: &Path) -> String {
    let err = open(path, None, false, false)
        .err()
        .expect("refused")
        .to_string();
    assert!(!err.contains('\n'), "one line: {err}");
    assert!(
        err.contains(path.to_str().unwrap()),
        "names the image: {err}"
    );
    err
}

#[test]
fn backing_chains_that_loop_or_go_too_deep_are_refused() {
    let d = dir();
    let p = |n: &str| d.as_path().join(n).to_str().unwrap().to_string();
    // a -> b -> a (qemu-img -u: do not open the backing file while creating).
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        &p("b.qcow2"),
        "-F",
        "qcow2",
        &p("a.qcow2"),
        "1M",
    ]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        &p("a.qcow2"),
        "-F",
        "qcow2",
        &p("b.qcow2"),
        "1M",
    ]);
    let err = refused(Path::new(&p("a.qcow2")));
    assert!(err.contains("loops"), "{err}");
    // An image backed by itself.
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "self.qcow2",
        "-F",
        "qcow2",
        &p("self.qcow2"),
        "1M",
    ]);
    assert!(refused(Path::new(&p("self.qcow2"))).contains("loops"));

    // c17 has 17 backing files (c16 .. c1, then the raw c0): one too many; c16 opens.
    std::fs::write(p("c0.img"), vec![7u8; 1 << 20]).unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "c0.img",
        "-F",
        "raw",
        &p("c1.qcow2"),
        "1M",
    ]);
    for i in 2..=17 {
        let back = format!("c{}.qcow2", i - 1);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-b",
            &back,
            "-F",
            "qcow2",
            &p(&format!("c{i}.qcow2")),
            "1M",
        ]);
    }
    let err = refused(Path::new(&p("c17.qcow2")));
    assert!(err.contains("deeper than 16"), "{err}");
    let ok = open(Path::new(&p("c16.qcow2")), None, true, false).unwrap();
    assert_eq!(ok.capacity(), 2048);

    // A missing backing file names it.
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "gone.img",
        "-F",
        "raw",
        &p("orphan.qcow2"),
        "1M",
    ]);
    assert!(refused(Path::new(&p("orphan.qcow2"))).contains("gone.img"));
}

/// Bytes to put at an offset of an image.
type Patch<'a> = (usize, &'a [u8]);

/// A fresh 1 MiB qcow2 v3 image's header with `patches` applied at byte offsets.
fn patched(d: &Path, name: &str, patches: &[Patch]) -> PathBuf {
    let (_f, path) = qcow2_in(d, name, "1M", &[]);
    let mut bytes = std::fs::read(&path).unwrap();
    for (at, b) in patches {
        bytes[*at..*at + b.len()].copy_from_slice(b);
    }
    std::fs::write(&path, bytes).unwrap();
    std::mem::forget(_f);
    path
}

#[test]
fn hostile_headers_are_refused_at_open_with_one_line() {
    let d = dir();
    let d = d.as_path();
    let cases: &[(&str, &[Patch], &str)] = &[
        ("version4", &[(4, &4u32.to_be_bytes())], "version 4"),
        (
            "cluster_bits",
            &[(20, &40u32.to_be_bytes())],
            "cluster_bits 40",
        ),
        (
            "cluster_bits_small",
            &[(20, &8u32.to_be_bytes())],
            "cluster_bits 8",
        ),
        ("encrypted", &[(32, &1u32.to_be_bytes())], "encrypted"),
        ("luks", &[(32, &2u32.to_be_bytes())], "crypt_method 2"),
        (
            "l1_huge",
            &[(36, &u32::MAX.to_be_bytes())],
            "larger than 32 MiB",
        ),
        (
            "l1_small",
            &[(24, &(1u64 << 40).to_be_bytes())],
            "cannot map the virtual size",
        ),
        (
            "l1_outside",
            &[(40, &(1u64 << 40).to_be_bytes())],
            "ends beyond the file",
        ),
        (
            "l1_unaligned",
            &[(40, &0x10200u64.to_be_bytes())],
            "not a non-zero multiple",
        ),
        (
            "reftable_outside",
            &[(48, &(1u64 << 40).to_be_bytes())],
            "refcount table",
        ),
        (
            "reftable_huge",
            &[(56, &1000u32.to_be_bytes())],
            "larger than 8 MiB",
        ),
        ("dirty", &[(79, &[1])], "dirty"),
        ("corrupt", &[(79, &[2])], "corrupt"),
        ("data_file", &[(79, &[4])], "external data file"),
        ("zstd", &[(79, &[8])], "compression"),
        ("extended_l2", &[(79, &[16])], "extended L2"),
        (
            "unknown_bit",
            &[(74, &[1])],
            "unknown incompatible features 0x10000000000",
        ),
    ];
    for (name, patches, want) in cases {
        let path = patched(d, &format!("{name}.qcow2"), patches);
        let err = refused(&path);
        assert!(err.contains(want), "{name}: {err}");
    }
}

#[test]
fn a_table_entry_pointing_far_outside_the_file_is_an_io_error_not_a_huge_file() {
    let d = dir();
    let (file, path) = qcow2_in(d.as_path(), "disk.qcow2", "1M", &[]);
    // Allocate cluster 0 through the device, then point its L2 entry 1 TiB away.
    let mut h = harness(file, &path, false);
    h.write_sectors(0, &[1; 512]);
    flush(&mut h);
    let Harness { file, block, .. } = h;
    drop(block);
    let mut bytes = std::fs::read(&path).unwrap();
    let l1 = u64::from_be_bytes(bytes[40..48].try_into().unwrap()) as usize;
    let l2 = (u64::from_be_bytes(bytes[l1..l1 + 8].try_into().unwrap()) & 0x00ff_ffff_ffff_fe00)
        as usize;
    let entry = (1u64 << 63) | (1u64 << 40);
    bytes[l2..l2 + 8].copy_from_slice(&entry.to_be_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let len_before = bytes.len() as u64;
    let mut h = harness(file, &path, false);
    // Reading there reads past the end of the file: zeroes.
    assert_eq!(h.read_sectors(0, 1), vec![0u8; 512]);
    // Writing there is refused: IOERR, and the file does not grow to a terabyte.
    h.mem.write_slice(&[9u8; 512], GuestAddress(DATA)).unwrap();
    h.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        h.run(&[hdr(), (DATA, 512, 0), status()]).1,
        VIRTIO_BLK_S_IOERR
    );
    drop(h);
    assert!(std::fs::metadata(&path).unwrap().len() < len_before + (64 << 20));
}

#[test]
fn header_checks_never_panic_on_short_or_random_input() {
    let mut head = vec![0u8; HEADER_BYTES];
    head[..4].copy_from_slice(b"QFI\xfb");
    for len in 0..=HEADER_BYTES {
        let _ = check_qcow2_header(&head[..len], 1 << 20);
    }
    let mut x = 0x1234_5678_u32;
    for _ in 0..2000 {
        for b in head[4..].iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        head[7] = (x % 4) as u8;
        let _ = check_qcow2_header(&head, u64::from(x));
    }
}

#[test]
fn a_guest_cannot_turn_a_detected_raw_image_into_qcow2() {
    let d = dir();
    let path = d.as_path().join("raw.img");
    let file = TempFile::new_in(d.as_path()).unwrap();
    std::fs::rename(file.as_path(), &path).unwrap();
    std::fs::write(&path, vec![0u8; 8192]).unwrap();
    let mut h = harness(file, &path, false);
    // The qcow2 magic split over two buffers at sector 0: refused, nothing written.
    h.mem.write_slice(b"QF", GuestAddress(DATA)).unwrap();
    h.mem
        .write_slice(b"I\xfb", GuestAddress(DATA + 0x1000))
        .unwrap();
    h.header(VIRTIO_BLK_T_OUT, 0);
    let st = h
        .run(&[hdr(), (DATA, 2, 0), (DATA + 0x1000, 510, 0), status()])
        .1;
    assert_eq!(st, VIRTIO_BLK_S_IOERR);
    assert_eq!(std::fs::read(&path).unwrap(), vec![0u8; 8192]);
    // The magic elsewhere, or anything else at sector 0, is an ordinary write.
    let mut magic = b"QFI\xfb".to_vec();
    magic.resize(512, 0);
    h.write_sectors(1, &magic);
    h.write_sectors(0, &[0x51; 512]);
    drop(h);
    // format=raw said so: the guest's bytes are its own business.
    let block = open(&path, Some(DiskFormat::Raw), false, false).unwrap();
    let file = TempFile::new_in(d.as_path()).unwrap();
    let mut h = Harness::around(file, block, false, DISCARD_FEATURES);
    h.write_sectors(0, &magic);
    assert_eq!(std::fs::read(&path).unwrap()[..4], *b"QFI\xfb");
}

/// Between the guest's flushes the file is consistent as it stands (what a kill -9 leaves):
/// every request writes imago's cached tables back, refcounts first, so `qemu-img check` finds
/// no error and the writes are mapped, with no FLUSH and the device still open.
#[test]
fn every_request_leaves_the_file_consistent_without_a_flush() {
    let d = dir();
    let (file, path) = qcow2_in(d.as_path(), "disk.qcow2", "8M", &[]);
    let mut h = harness(file, &path, false);
    // Data clusters in two L2 tables' ranges (64 KiB clusters: 512 MiB each; 8 MiB here, so
    // one table), then a discard.
    h.write_sectors(0, &[0x11; 512]);
    h.write_sectors(4096, &[0x22; 1024]);
    assert_eq!(
        trim(&mut h, VIRTIO_BLK_T_DISCARD, &[(4096, 128, 0)]).1,
        VIRTIO_BLK_S_OK
    );
    h.write_sectors(8000, &[0x33; 512]);
    qemu_img_check(&path);
    let raw = as_raw(&path, d.as_path());
    assert_eq!(raw[..512], [0x11; 512]);
    assert_eq!(raw[8000 * 512..8001 * 512], [0x33; 512]);
    assert!(raw[4096 * 512..4098 * 512].iter().all(|b| *b == 0));
    drop(h);
}

/// A writable image whose refcount table has no block for its own header (a fuzzer's find: the
/// qcow2 layer took the header's cluster for free and recursed without end making blocks) is
/// refused at open; read-only, it is served (nothing is allocated).
#[test]
fn a_refcount_table_without_a_block_for_the_header_is_refused_for_writing() {
    let d = dir();
    let d = d.as_path();
    // qemu-img's layout with 64 KiB clusters: the refcount table at 0x10000.
    let path = patched(d, "no_refblock.qcow2", &[(0x10000, &[0u8; 8])]);
    let err = refused(&path);
    assert!(err.contains("refcount table entry 0"), "{err}");
    assert!(err.contains("qemu-img check -r all"), "{err}");
    assert!(open(&path, None, true, false).is_ok(), "read-only it opens");
}

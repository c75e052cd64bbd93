//! The device-level blk benchmark's guest (crates/test-guests, `blk_bench`) on real KVM: in each
//! mode, with the queue full, every request is answered OK and the data is what it should be, read
//! back by the guest and checked in the file by the host. Behaviour only: no timing is asserted.

mod common;

use std::time::Duration;

use common::{run_vmm, Run, Scratch};
use test_guests::{blk_bench_image, blk_bench_stamp, Report, BLK_BENCH, BLK_BENCH_STAMP_LEN};

const TIMEOUT: Duration = Duration::from_secs(120);
/// 8 MiB: 16384 sectors, 2048 blocks of 4 KiB, 8 of 1 MiB (so the sequential requests wrap
/// around the disk).
const SECTORS: u64 = 16384;
const WRITE_SEED: u32 = 7;

fn num(run: &Run, r: &Report, key: &str) -> u64 {
    r.num(key)
        .unwrap_or_else(|| panic!("guest did not report {key}\n{run}"))
}

/// Runs blk_bench on `disk` with `args` and an explicit `aio=sync` where the vmm has the option.
fn bench(disk: &str, args: &str) -> Run {
    let cmdline = format!("{args} blk_verify=1 blk_seed={WRITE_SEED}");
    let sync = format!("path={disk},aio=sync");
    let run = run_vmm(
        &[
            "--kernel",
            BLK_BENCH,
            "--disk",
            &sync,
            "--cmdline",
            &cmdline,
        ],
        TIMEOUT,
    );
    if run.code == Some(2) && run.stderr.contains("unknown disk option 'aio'") {
        // A vmm without the option serves every disk synchronously.
        return run_vmm(
            &["--kernel", BLK_BENCH, "--disk", disk, "--cmdline", &cmdline],
            TIMEOUT,
        );
    }
    run
}

/// (sectors stamped with `seed`, sectors whose stamp is wrong for their place) in `img`.
fn stamps(img: &[u8], seed: u32) -> (u64, u64) {
    let (mut with_seed, mut wrong) = (0, 0);
    for (sector, s) in img.chunks(512).enumerate() {
        let sector = sector as u64;
        let head = &s[..BLK_BENCH_STAMP_LEN];
        if head == blk_bench_stamp(sector, seed) {
            with_seed += 1;
        } else if head != blk_bench_stamp(sector, 0) {
            wrong += 1;
        }
    }
    (with_seed, wrong)
}

/// `depth` requests in flight until `count` are measured (1 MiB requests are slow through the
/// debug build of vmm the tests run: few of them).
fn blk_bench_mode(mode: &str, bs: u64, depth: u64, count: u64) {
    require_kvm!();
    let scratch = Scratch::new(&format!("blk-bench-{mode}"));
    let disk = scratch.file("disk.img", &blk_bench_image(SECTORS, 0));
    let run = bench(
        &disk,
        &format!("blk_mode={mode} blk_depth={depth} blk_count={count}"),
    );
    let r = run.finished_report();
    run.expect(r.get("mode") == Some(mode), "wrong mode");
    run.expect(num(&run, &r, "bs") == bs, "wrong request size");
    run.expect(num(&run, &r, "depth") == depth, "wrong depth");
    run.expect(num(&run, &r, "capacity") == SECTORS, "wrong capacity");
    let ops = num(&run, &r, "ops");
    run.expect(ops >= count, "fewer requests measured than asked for");
    run.expect(num(&run, &r, "bytes") == ops * bs, "bytes are not ops × bs");
    let submitted = num(&run, &r, "submitted");
    run.expect(submitted >= ops + depth, "the queue was not kept full");
    run.expect(
        num(&run, &r, "answered") == submitted,
        "a request was not answered",
    );
    run.expect(num(&run, &r, "errors") == 0, "a request failed");
    run.expect(num(&run, &r, "bad_data") == 0, "wrong data");
    run.expect(num(&run, &r, "elapsed_us") > 0, "no elapsed time");
    run.expect(
        num(&run, &r, "tsc_khz") > 100_000,
        "the TSC was not calibrated",
    );

    let img = std::fs::read(&disk).unwrap();
    let (written, wrong) = stamps(&img, WRITE_SEED);
    run.expect(wrong == 0, "a sector of the file holds a wrong stamp");
    if mode.ends_with("write") {
        let blocks = num(&run, &r, "verify_blocks");
        run.expect(blocks > 0, "nothing was read back");
        run.expect(num(&run, &r, "verify_bad") == 0, "a write read back wrong");
        // The file holds exactly the blocks the guest wrote and read back.
        run.expect(
            written == blocks * bs / 512,
            &format!("{written} sectors written in the file, the guest wrote {blocks} blocks"),
        );
    } else {
        run.expect(written == 0, "a read changed the file");
    }
}

#[test]
fn blk_bench_random_reads_4k() {
    blk_bench_mode("randread", 4096, 32, 256);
}

#[test]
fn blk_bench_random_writes_4k() {
    blk_bench_mode("randwrite", 4096, 32, 256);
}

#[test]
fn blk_bench_sequential_reads_1m() {
    blk_bench_mode("seqread", 1 << 20, 4, 4);
}

#[test]
fn blk_bench_sequential_writes_1m() {
    blk_bench_mode("seqwrite", 1 << 20, 4, 4);
}

/// The guest's checks are live: an image without stamps makes verified reads fail (exit 1).
#[test]
fn blk_bench_catches_wrong_data() {
    require_kvm!();
    let scratch = Scratch::new("blk-bench-unstamped");
    let disk = scratch.file("disk.img", &vec![0u8; (SECTORS * 512) as usize]);
    let run = bench(&disk, "blk_mode=randread blk_depth=32 blk_count=64");
    run.expect(run.code == Some(1), "vmm did not exit 1 on wrong data");
    let r = Report::parse(&run.stdout);
    run.expect(r.done, "guest did not finish");
    run.expect(num(&run, &r, "bad_data") > 0, "wrong data went unnoticed");
    run.expect(num(&run, &r, "errors") == 0, "a request failed");
}

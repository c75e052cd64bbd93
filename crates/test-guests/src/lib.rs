//! Tiny freestanding x86_64 test guests for the integration tests.
//!
//! `build.rs` compiles the C and assembly in `guests/` with the machine's `gcc`
//! and `ld` (override with `TEST_GUESTS_CC`, `TEST_GUESTS_LD`,
//! `TEST_GUESTS_OBJCOPY`) into `OUT_DIR`; the constants below are the paths of
//! the results. Every image is loaded at 1 MiB (0x100000) physical.
//!
//! # Output protocol
//! On COM1 (port 0x3f8, LSR bit 5 polled before each byte): one fact per line,
//! `key=value`, lowercase keys, numbers in lowercase hex with `0x` and no
//! leading zeros (`e820_count=0x3`), lines end with `\n` only. The last line
//! before the guest ends is `done`. Then the guest writes 0xFE to port 0x64
//! (i8042 reset). If it is still running after that write (the VMM ignored
//! it), it prints `i8042_reset=ignored` and triple-faults (empty IDT + `ud2`),
//! so no guest hangs; a test asserting a clean i8042 reset checks that this
//! line is absent. [`Report`] parses such output.
//!
//! # Entry
//! Whatever the protocol, the entry stub installs its own GDT, an identity map
//! of the first 4 GiB with 2 MiB pages (3..4 GiB uncached, for MMIO), a stack
//! in .bss, zeroes .bss, and runs the guest in 64-bit long mode with
//! interrupts off. Guests do not use CPUID.
//! - PVH guests: ELF64 with a `Xen` note of type 18 (XEN_ELFNOTE_PHYS32_ENTRY)
//!   holding the 32-bit entry; expect 32-bit protected mode, paging off,
//!   EBX = hvm_start_info. `e_entry` is the same address.
//! - Linux 64-bit guests: ELF64 without a PT_NOTE; `e_entry` expects long
//!   mode with the first GiB identity mapped, RSI = boot_params.
//! - The bzImage guest: see [`BZIMAGE_INFO`].

/// PVH boot report. ELF with the PVH note.
///
/// Prints, in order: `boot=pvh`, `entry=32`, `entry_if=0x0|0x1` (RFLAGS.IF at
/// entry), `info_ptr=<EBX>`, `magic=<hvm_start_info.magic>` (0x336ec578 expected;
/// otherwise `error=bad_magic`, `done`), `version=`, `cmdline=<text>` (empty if
/// cmdline_paddr is 0), `e820_count=` (memmap_entries, 0 if version 0), one
/// `e820=<addr>,<size>,<type>` per memmap entry (at most 128 printed), `modules=`
/// (nr_modules), `initrd_addr=`, `initrd_size=`, `initrd_sum=` for modlist[0]
/// (all 0x0 and sum 0x811c9dc5 without a module), `done`.
///
/// `initrd_sum` is FNV-1a 32-bit over the module's bytes (see [`fnv1a32`]);
/// `initrd_sum=unmapped` if the module is not below 4 GiB. If EBX is 0 or not
/// below 4 GiB: `error=no_boot_info`.
pub const PVH_INFO: &str = concat!(env!("OUT_DIR"), "/pvh_info.elf");

/// Linux 64-bit boot protocol report. ELF without the PVH note; the VMM enters
/// `e_entry` in long mode with RSI = boot_params (zero page).
///
/// Prints: `boot=linux64`, `entry=64`, `entry_if=`, `info_ptr=<RSI>`,
/// `hdr_magic=` (hdr.header at 0x202, "HdrS" = 0x53726448 if the VMM filled it),
/// `boot_flag=` (0x1fe), `loader_type=` (hdr.type_of_loader, 0x210),
/// `cmdline=<text>` (hdr.cmd_line_ptr 0x228 | ext_cmd_line_ptr 0x0c8 << 32),
/// `e820_count=` (0x1e8), one `e820=<addr>,<size>,<type>` per entry of the
/// table at 0x2d0 (20 bytes each, at most 128), `initrd_addr=` (0x218 |
/// 0x0c0 << 32), `initrd_size=` (0x21c | 0x0c4 << 32), `initrd_sum=` (FNV-1a
/// 32-bit, as for [`PVH_INFO`]), `done`.
pub const LINUX64_INFO: &str = concat!(env!("OUT_DIR"), "/linux64_info.elf");

/// bzImage-shaped boot report (not an ELF).
///
/// Layout: 2 real-mode sectors (boot sector + `setup_sects` = 1) carrying a
/// setup header: boot_flag 0xAA55, "HdrS", version 0x020c, loadflags
/// LOADED_HIGH, xloadflags XLF_KERNEL_64, code32_start = pref_address =
/// 0x100000, not relocatable, cmdline_size 2047, init_size = the protected-mode
/// part (whose .bss is included as zeros) rounded to 4 KiB, syssize. Then the
/// protected-mode part, to be loaded at 0x100000: offset 0 is a 32-bit boot
/// protocol entry (ESI = boot_params), offset 0x200 the 64-bit entry (RSI =
/// boot_params). The real-mode entry (setup + 0x200, a jump to file offset
/// 0x280) fills the e820 table from BIOS int 0x15 and enters the 32-bit entry;
/// it exists for BIOS loaders (QEMU `-M pc`) and is the least tested part.
///
/// Prints the same lines as [`LINUX64_INFO`] except `boot=bzimage`, and
/// `entry=64` or `entry=32` according to the entry point used.
pub const BZIMAGE_INFO: &str = concat!(env!("OUT_DIR"), "/bzimage_info.bzImage");

/// PVH guest that prints `triple_fault=now`, loads an empty IDT (limit 0) and
/// executes `ud2`: a triple fault (the VMM should treat it as a reset, exit 0).
/// No `done` line.
pub const TRIPLE_FAULT: &str = concat!(env!("OUT_DIR"), "/triple_fault.elf");

/// PVH guest that prints `flood_begin`, then [`FLOOD_LINES`] lines of 64
/// printable characters (64 KiB in all, see [`flood_line`]), then `flood_end`,
/// `done`, and resets.
pub const SERIAL_FLOOD: &str = concat!(env!("OUT_DIR"), "/serial_flood.elf");

/// PVH SMP guest.
///
/// Looks for the MP floating pointer ("_MP_", 16-byte aligned) in
/// 0x9fc00..0xa0000, then 0xf0000..0x100000. Prints `mp_found=0` if none, else
/// `mp_fp=<addr>`, `mp_config=<addr>`, and if the config table has the "PCMP"
/// signature: `mp_lapic=`, `mp_entries=` (the header's entry count field),
/// `mp_length=` (base table length), and per processor entry
/// `mp_cpu=<apic id>,<cpu flags>` (entries are walked by the base table length,
/// as Linux does). Then `mp_cpus=` (processor entries with the enabled flag),
/// `mp_ok=0x1|0x0` (both checksums and signatures valid), `bsp_apic_id=` (LAPIC
/// MMIO 0xfee00020 >> 24).
///
/// Then it copies a trampoline to 0x10000, software-enables its LAPIC and sends
/// INIT, SIPI, SIPI (vector 0x10) to all-but-self. Each AP goes real mode →
/// 32-bit protected mode, records its LAPIC ID and halts (`cli; hlt` loop). The
/// BSP waits (bounded: until `mp_cpus - 1` APs checked in, or about a second
/// without a valid MP table) and prints one `ap_apic_id=<id>` per AP in arrival
/// order, `cpus_seen=` (1 + APs seen), `done`, and resets.
pub const SMP: &str = concat!(env!("OUT_DIR"), "/smp.elf");

/// virtio-blk guest, Linux 64-bit entry.
///
/// Takes the first `virtio_mmio.device=<size>@<base>:<irq>` of its command
/// line whose slot is not empty (DeviceID 0 slots are skipped) and prints
/// `virtio_base=`, `virtio_size=`, `virtio_irq=` (or `virtio=none`, `done`). Then
/// `magic=`, `version=`, `device_id=`, `vendor_id=` (stops with
/// `error=not_a_modern_virtio_blk` unless 0x74726976 / 2 / 2), `reset_status=`
/// (Status after writing 0), `features=` (64-bit device features), `ro=0x0|0x1`
/// (feature bit 5), `driver_features=` (VERSION_1 and FLUSH if offered),
/// `features_ok=0x1|0x0` (stops if 0), `queue_num_max=` (stops with
/// `error=no_queue` if 0), `queue_ready_before=`, `queue_size=` (≤ 16),
/// `status=` (after DRIVER_OK, 0xf expected), `capacity=` (sectors).
///
/// Then requests, one at a time, each printing `<name>_status=` (the status byte
/// the device wrote; 0xee if it wrote none) and `<name>_len=` (used length):
/// `read` (sector 0, then `sector0=<first 16 bytes, non-printables as '.'>`),
/// `write` (sector 1 = `WRITTEN-BY-GUEST` + zeros), `flush`, `read1` (sector 1,
/// then `sector1=`), `id` (GET_ID, 20 bytes, then `id=<text up to the first NUL>`),
/// `unsupp` (type 0xff, expect 0x2), `oob` (read into guest-physical
/// 0xF000_0000_0000, expect 0x1), `read2` (sector 0 again, then
/// `sector0_again=`), and finally `final_status=` (Status register).
/// A request that is not completed within a bounded spin prints
/// `timeout=<name>` and ends the run. Always ends with `done` and a reset.
pub const VIRTIO_BLK: &str = concat!(env!("OUT_DIR"), "/virtio_blk.elf");

/// The same program as [`VIRTIO_BLK`], with a PVH entry (prints `boot=pvh`
/// where [`VIRTIO_BLK`] prints `boot=linux64`).
pub const VIRTIO_BLK_PVH: &str = concat!(env!("OUT_DIR"), "/virtio_blk_pvh.elf");

/// virtio-net guest (PVH), polling, no interrupts.
///
/// Takes the first `virtio_mmio.device=` slot of its command line whose DeviceID is 1 and
/// prints `virtio_base=` (or `virtio=none`, `done`), `version=`, `device_id=`, `features=`
/// (64-bit device features), `driver_features=` (VERSION_1 and MAC only), `status=` (after
/// DRIVER_OK), `mac=aa:bb:cc:dd:ee:ff` (config space). It posts eight 2048-byte RX buffers,
/// sends one 60-byte broadcast frame ([`NET_ETHERTYPE`], payload [`NET_GUEST_TEXT`], zeroed
/// vnet header in its own descriptor), prints `tx_used_len=`, `tx=sent`, then waits (bounded,
/// `timeout=rx`) for frames: `rx_len=` for each (vnet header included), and for the first
/// one of [`NET_ETHERTYPE`]: `rx_num_buffers=`, `rx_dst=`, `rx_src=`, `rx_head=` (first 32
/// bytes of the frame, hex), `rx_text=` (up to 40 bytes after the Ethernet header, up to
/// a NUL); with `net_rx=0` on the command line it skips receiving. Then resets the device,
/// prints `final_status=`, `done`.
pub const VIRTIO_NET: &str = concat!(env!("OUT_DIR"), "/virtio_net.elf");

/// The ethertype of the frames [`VIRTIO_NET`] sends and waits for (IEEE local experimental).
pub const NET_ETHERTYPE: u16 = 0x88b5;

/// The payload of the frame [`VIRTIO_NET`] sends.
pub const NET_GUEST_TEXT: &str = "VMM-NET-TINY-GUEST-HELLO";

/// Linux 64-bit guest printing `boot=linux64`, `cmdline=<text>`, `done`, then resetting.
pub const ECHO_CMDLINE: &str = concat!(env!("OUT_DIR"), "/echo_cmdline.elf");

/// PVH guest that prints `int3=now` and executes `int3` at CPL0. On a kvm_pvm
/// host that is a KVM internal error (the VMM must exit 1, not hang). If
/// execution continues it prints `int3=survived`, `done` and resets.
pub const PVH_HANG_INTERNAL_ERROR: &str = concat!(env!("OUT_DIR"), "/pvh_hang_internal_error.elf");

/// Benchmark guests (guests/bench.h): the boot timer is one byte, 123, written to port 0x440
/// ([`BOOT_TIMER_PORT`]), or with `boot_timer_mmio=A` on the command line (not [`NULL`]) to MMIO
/// address A; they end the VM without printing: i8042 reset (port 0x64), then QEMU's
/// isa-debug-exit (port 0xf4, if present), then a triple fault.
///
/// `null` (guests/null.S, no entry stub): at the PVH entry, in 32-bit mode with paging off, marks
/// the boot timer and ends the VM: six instructions, no memory writes.
pub const NULL: &str = concat!(env!("OUT_DIR"), "/null.elf");

/// `count=N` (default 100000) one-byte reads of port `port=P` (default 0x3fd, COM1's LSR), then
/// marks the boot timer and ends the VM; `count=0` is its baseline. Command-line numbers are
/// decimal or `0x` hex.
pub const EXIT_COST_PIO: &str = concat!(env!("OUT_DIR"), "/exit_cost_pio.elf");

/// `count=N` (default 100000) 32-bit reads of MMIO address `mmio=A` (default 0xd0000000, vmm's
/// first virtio-mmio slot; must be in 3..4 GiB), then as [`EXIT_COST_PIO`].
pub const EXIT_COST_MMIO: &str = concat!(env!("OUT_DIR"), "/exit_cost_mmio.elf");

/// Prints `parked`, marks the boot timer, then halts with interrupts off until killed.
pub const PARK: &str = concat!(env!("OUT_DIR"), "/park.elf");

/// Counts for good, printing `ticking`, then `tick=1`, `tick=2`, … each time the TSC advanced by
/// `tick_tsc=N` (default 50000000); ignores the power button.
pub const TICKER: &str = concat!(env!("OUT_DIR"), "/ticker.elf");

/// The boot timer's port, as the benchmark guests use it.
pub const BOOT_TIMER_PORT: u16 = 0x440;

/// virtio-console guest (PVH): drives the first virtio-mmio slot of its command line holding
/// a console (DeviceID 3) by polling, one port, receiveq and transmitq of at most 16 entries.
///
/// Prints on COM1 `virtio_base=`, `virtio_irq=` (or `virtio=none`, `done`), `device_id=0x3`,
/// `version=0x2`, `features=` (64-bit device features), `cols=` and `rows=` if F_SIZE is
/// offered, `queue_size=`, `status=` (0xf after DRIVER_OK). Every receive buffer (256 bytes) is
/// posted before DRIVER_OK. Then, with `console_flood=N` on the command line: N
/// blocks of [`console_flood`] through transmitq, one two-buffer chain per block (up to 8 in
/// flight), and nothing else, then `flood_bytes=`. Otherwise: sends
/// [`CONSOLE_HELLO`] through transmitq, prints `tx=ok`, then takes input from receiveq: with
/// `console_rx=1` it waits (bounded, several seconds) for a line, else it looks once; prints
/// `rx=<text without the line end>` and sends the same `rx=<text>\n` through transmitq. Finally
/// `reset_status=` (after writing 0 to Status), `done`, and a reset. A transfer that does not
/// complete within a bounded spin prints `timeout=<what>`.
pub const VIRTIO_CONSOLE: &str = concat!(env!("OUT_DIR"), "/virtio_console.elf");

/// Drives the first virtio-vsock device by polling. Prints on COM1 `device_id=0x13`, `cid=`,
/// `status=` (0xf after DRIVER_OK) and `listening` once it serves. With `vsock_connect=P` it
/// connects to host port P from guest port 4000 (`connect=ok` or `connect=rst`) and sends
/// `guest-hello\n`; with `vsock_refused=P` it connects to P from port 4001 and expects a reset
/// (`refused=rst`); with `vsock_listen=P` it accepts connections on P (up to 128 at once) and
/// echoes every byte, holding at most 16 KiB per connection (its credit), and ends a connection
/// once the host ended its side and every byte went back. Every connection is echoed, the
/// outgoing one included. A request to port P+1 ends the guest: `accepted=`, `echoed=` (bytes),
/// `reset_status=`, `done`. Bounded: about a minute in all (`timeout=loop`).
pub const VSOCK: &str = concat!(env!("OUT_DIR"), "/vsock.elf");

/// Bytes of one [`VIRTIO_CONSOLE`] flood block.
pub const CONSOLE_FLOOD_BLOCK: usize = 8 + 65536;

/// What [`VIRTIO_CONSOLE`] sends with `console_flood=blocks`: for each block `b`, `b` as a
/// little-endian u64, then the u64 words 0..8191 (little endian). Cheap for the guest, unique
/// per position.
pub fn console_flood(blocks: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(65536);
    for w in 0..8192u64 {
        body.extend_from_slice(&w.to_le_bytes());
    }
    let mut out = Vec::with_capacity(blocks * CONSOLE_FLOOD_BLOCK);
    for b in 0..blocks as u64 {
        out.extend_from_slice(&b.to_le_bytes());
        out.extend_from_slice(&body);
    }
    out
}

/// The line [`VIRTIO_CONSOLE`] sends through its transmit queue.
pub const CONSOLE_HELLO: &str = "hello from the virtio console\n";

/// Hostile virtio driver (PVH): attacks the first virtio-mmio slot of the type named by
/// `hostile=blk|console|net|vsock` on its command line (default blk), the *target*, while the *witness*
/// (the first blk slot that is not the target) must keep working. Needs `--memory 128M` (one
/// attack puts rings at the end of RAM).
///
/// Prints `target_type=`, `target_base=`, `witness_base=` (or `error=no_target` /
/// `error=no_witness`), `start_target=` and `start_witness=` (Status after start-up, 0xf),
/// `start_target_valid=0x1`, `start_witness_valid=0x1`. Then per attack (see [`HOSTILE_ATTACKS`];
/// `hostile_only=NAME` runs one, `hostile_rounds=N` runs the list N times) a line with its name, its own `<name>_<fact>=` lines, and
/// `<name>_dstatus=` (target Status after the attack, bit 0x40 = DEVICE_NEEDS_RESET),
/// `<name>_recover=` (0x1: after a reset and a fresh start a valid request was served),
/// `<name>_witness=` (0x1: the witness served a valid request). Chain attacks print `<name>_res=`
/// (0x1 the device used the chain, 0x2 it set DEVICE_NEEDS_RESET, 0x0 neither within a bounded
/// wait) and for blk `<name>_st=` (the status byte; 0xee unwritten). Ends with `attacks=`, `done`
/// and an i8042 reset. A valid request on blk writes and reads back sectors 2..6 of the disk; on
/// vsock it is an empty RW to a port nobody connected (taken, answered with a reset). A vsock
/// target also gets [`HOSTILE_VSOCK_ATTACKS`].
pub const HOSTILE: &str = concat!(env!("OUT_DIR"), "/hostile.elf");

/// The attacks of [`HOSTILE`], in order.
pub const HOSTILE_ATTACKS: &[&str] = &[
    "regs_garbage",
    "config_past_end",
    "status_order",
    "queue_sel",
    "qnum_zero",
    "qnum_npot",
    "qnum_big",
    "qnum_huge",
    "q_outside_ram",
    "q_mmio_gap",
    "q_ram_end",
    "q_misaligned",
    "q_wrap",
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
    "used_idx_lie",
    "notify_flood",
    "same_head_many",
];

/// The attacks [`HOSTILE`] runs after [`HOSTILE_ATTACKS`] when its target is virtio-vsock
/// (`hostile=vsock`; see guests/hostile_vsock.h for their facts): malformed headers, credit lies
/// into receive buffers smaller than the packets, a flood of more connection requests than the
/// device holds, and no receive buffers while a host program writes. Then the guest listens on
/// port 1234 (`final_listening`), echoes one host connection and prints `final_echoed=`.
pub const HOSTILE_VSOCK_ATTACKS: &[&str] =
    &["vs_headers", "vs_credit_lies", "vs_flood", "vs_no_rx"];

/// virtio-blk writer (PVH) for data-safety tests: record `n` ([`writer_record`], 4 KiB) goes to
/// sector `8n` of the first blk disk, then a FLUSH; `flushed=<n>` is printed once the flush
/// completed with status OK. Prints `status=` (0xf), `capacity=`, then the `flushed=` lines; stops
/// at the end of the disk or after `writer_max=N` records (`records=`), or at the first failed
/// request (`error_write=<n>` / `error_flush=<n>`); then `done` and a reset.
pub const BLK_WRITER: &str = concat!(env!("OUT_DIR"), "/blk_writer.elf");

/// Rate probe (PVH): measures with its own clock (the TSC, calibrated against PIT channel 2) how
/// fast the first virtio-blk disk serves reads kept in flight, or with `probe_dev=net` how fast the
/// first virtio-net NIC takes TX frames. Command line: `probe_size=` bytes per read (multiple of
/// 512, ≤ 256 KiB, default 64 KiB) or per frame without the vnet header (60..1514, default 60),
/// `probe_depth=` requests in flight (≤ 16, default 8), `probe_warm_ms=` requests before measuring,
/// to spend a limiter's burst (default 500), `probe_ms=` measurement length (default 2000). Prints
/// `tsc_khz=` (or `error=pit_timeout`), `tsc_sharp_windows=`, `status=`, `capacity=` (blk),
/// `probe_size=`, `probe_depth=`, `warm_ops=`, `probe_ops=`, `probe_us=`, `probe_errors=` (status
/// byte not OK), `bw_bytes_per_s=`, `iops=` (or `timeout=probe` if a request waits over 5 s), then
/// `done` and a reset.
pub const RATE_PROBE: &str = concat!(env!("OUT_DIR"), "/rate_probe.elf");

/// Device-level virtio-blk benchmark (PVH, guests/blk_bench.c): keeps the first disk's queue full
/// (`blk_depth=N` requests in flight, default 32) in one of four modes (`blk_mode=randread`,
/// `randwrite` with 4 KiB requests, `seqread`, `seqwrite` with 1 MiB ones; `blk_bs=` overrides)
/// for `blk_ms=MS` (default 2000) after `blk_warm_ms=` (200), or for `blk_count=N` requests, timed
/// with the TSC calibrated against PIT channel 0. Request slot `s` uses the buffer at guest-physical
/// 16 MiB + s × bs: give it 16 MiB + depth × bs of RAM.
///
/// With `blk_verify=1` writes carry a stamp in every sector ([`blk_bench_stamp`], seed
/// `blk_seed=N`, default 1) and are read back and checked after the run, and reads check that
/// every sector they read carries a stamp (any seed) of its own number.
///
/// Prints `tsc_khz=`, `status=`, `capacity=`, `mode=`, `bs=`, `depth=`, `warm_ops=`, the lines
/// `bench_start` and `bench_end` (the host may time them), `ops=`, `bytes=`, `elapsed_us=`,
/// `elapsed_tsc=`, (`verify_blocks=`, ) `submitted=`, `answered=`, `errors=` (status byte not OK),
/// `bad_data=` (sectors with a wrong stamp), (`verify_bad=`), `done`; `timeout=bench` when a request
/// waits over 5 s. Ends through the exit device (port 0x501): 0 when every request was answered OK
/// and every check held, else 1; then QEMU's isa-debug-exit and a triple fault ([`NULL`]'s way).
pub const BLK_BENCH: &str = concat!(env!("OUT_DIR"), "/blk_bench.elf");

/// Bytes of one [`BLK_BENCH`] stamp, at the start of a 512-byte sector.
pub const BLK_BENCH_STAMP_LEN: usize = 16;

/// The stamp [`BLK_BENCH`] writes at the start of sector `sector`: `VBLK`, `seed` (u32 LE),
/// `sector` (u64 LE).
pub fn blk_bench_stamp(sector: u64, seed: u32) -> [u8; BLK_BENCH_STAMP_LEN] {
    let mut s = [0u8; BLK_BENCH_STAMP_LEN];
    s[..4].copy_from_slice(b"VBLK");
    s[4..8].copy_from_slice(&seed.to_le_bytes());
    s[8..].copy_from_slice(&sector.to_le_bytes());
    s
}

/// An image of `sectors` sectors, each starting with its [`blk_bench_stamp`] of `seed`, the rest
/// of the sector a non-zero pattern (so no block is a hole).
pub fn blk_bench_image(sectors: u64, seed: u32) -> Vec<u8> {
    let mut img = Vec::with_capacity(usize::try_from(sectors).unwrap_or(0) * 512);
    for sector in 0..sectors {
        img.extend_from_slice(&blk_bench_stamp(sector, seed));
        img.extend((BLK_BENCH_STAMP_LEN..512).map(|i| (i % 251) as u8 | 1));
    }
    img
}

/// Interrupts (PVH): programs the local APIC, the I/O APIC and the PIT as a kernel does and counts
/// what arrives. Prints `lapic_id=`, `ioapic_version=`, `ioapic_id=` (after writing ID 5),
/// `ioapic_rte0_readback=` (entry 0 written masked with vector 0x30), `pit_periodic_ticks=`
/// (channel 0 in mode 2 at 1 kHz over 50 ms measured by channel 2), `pit_readback_status=`,
/// `pit_masked_ticks=` (20 ms with entry 0 masked), `pit_oneshot_ticks=` (30 ms after a 5 ms
/// mode-0 count), `serial_irqs=` (after enabling the UART's THR-empty interrupt), `other_irqs=`,
/// `spurious_irqs=`, then `done` and a reset; `timeout=NAME` if a PIT window never ends.
pub const IRQ: &str = concat!(env!("OUT_DIR"), "/irq.elf");

/// Snapshots (PVH): `rounds=` (default 1000) rounds of a checksum over a 64 KiB buffer (`work=`
/// steps each, default 200), each folded into xmm7 with `sse` on the command line (a host that
/// cannot run SSE in guest kernel mode stops such a guest at once), and ended by one timer interrupt waited for
/// with `hlt` (the local APIC timer on even rounds, PIT channel 0 in mode 0 through I/O APIC pin 0
/// on odd ones); `round=N sum=0x...` every 100 rounds; then `result=`, `sse=HI,LO`, `lapic_irqs=`,
/// `pit_irqs=`, `other_irqs=`, `spurious_irqs=` (hex), `done` and a reset. A run saved and
/// restored any number of times prints exactly what an uninterrupted run prints.
pub const SNAP: &str = concat!(env!("OUT_DIR"), "/snap.elf");

/// Record `n` as [`BLK_WRITER`] writes it: "VMMREC", two zero bytes, `n` (u64 LE), then byte `i`
/// (16..4096) = `n * 31 + i * 7` (mod 256).
pub fn writer_record(n: u64) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    b[..6].copy_from_slice(b"VMMREC");
    b[8..16].copy_from_slice(&n.to_le_bytes());
    for (i, x) in b.iter_mut().enumerate().skip(16) {
        *x = (n.wrapping_mul(31)).wrapping_add(i as u64 * 7) as u8;
    }
    b
}

/// Every guest image, by name, for tests that iterate over all of them.
/// ACPI guest (PVH): prints `start_info_rsdp=` (the RSDP address in the PVH start info), `rsdp=`
/// (found by scanning 0xe0000..0x100000 on 16-byte boundaries, 0x0 if absent), `rsdp_checksum=ok`
/// or `bad` (both checksums), `rsdp_revision=`, then for the XSDT, each table it lists and the
/// FADT's X_DSDT: `table=SIG,<addr>,<len>,ok|bad` (checksum) and `dump=SIG,<hex bytes>`; then
/// `tables_done`. Then the command line's `action=`: `poweroff` (S5 to the sleep control register
/// 0x600), `reset` (1 to the reset register 0x602), `panic` (prints `pvpanic_features=` read from
/// port 0x505, then writes 1 to it), `button` (prints `waiting_for_button`, polls the GED selector
/// 0x603 until it is non-zero, prints `button=`, then powers off as for `poweroff`), `exit` and
/// `exit_mmio` (write the command line's `status=N` to the exit device's port 0x501, or to its
/// MMIO page 0xc000_1000), `hang`
/// (prints `hanging` and spins for minutes, ignoring the power button). Each action prints
/// `<action>=ignored` if the VM goes on. `done` last.
pub const ACPI: &str = concat!(env!("OUT_DIR"), "/acpi.elf");

/// [`ACPI`] entered through the Linux 64-bit protocol (the RSDP address from the zero page).
pub const ACPI_LINUX64: &str = concat!(env!("OUT_DIR"), "/acpi_linux64.elf");

pub const ALL: &[(&str, &str)] = &[
    ("pvh_info", PVH_INFO),
    ("linux64_info", LINUX64_INFO),
    ("bzimage_info", BZIMAGE_INFO),
    ("triple_fault", TRIPLE_FAULT),
    ("serial_flood", SERIAL_FLOOD),
    ("smp", SMP),
    ("virtio_blk", VIRTIO_BLK),
    ("virtio_blk_pvh", VIRTIO_BLK_PVH),
    ("virtio_net", VIRTIO_NET),
    ("echo_cmdline", ECHO_CMDLINE),
    ("pvh_hang_internal_error", PVH_HANG_INTERNAL_ERROR),
    ("virtio_console", VIRTIO_CONSOLE),
    ("vsock", VSOCK),
    ("null", NULL),
    ("exit_cost_pio", EXIT_COST_PIO),
    ("exit_cost_mmio", EXIT_COST_MMIO),
    ("park", PARK),
    ("ticker", TICKER),
    ("hostile", HOSTILE),
    ("blk_writer", BLK_WRITER),
    ("rate_probe", RATE_PROBE),
    ("blk_bench", BLK_BENCH),
    ("irq", IRQ),
    ("snap", SNAP),
    ("acpi", ACPI),
    ("acpi_linux64", ACPI_LINUX64),
];

/// Number of pattern lines [`SERIAL_FLOOD`] prints between `flood_begin` and `flood_end`.
pub const FLOOD_LINES: usize = 1024;

/// The base64 alphabet the flood pattern is drawn from.
const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Line `i` (0-based) of [`SERIAL_FLOOD`]'s pattern, without its newline: four
/// lowercase hex digits of `i`, then 60 characters where character `k` is
/// `B64[(i + k) % 64]`, B64 being the base64 alphabet (`A-Z a-z 0-9 + /`).
pub fn flood_line(i: usize) -> String {
    let mut s = format!("{:04x}", i & 0xffff);
    s.extend((0..60).map(|k| char::from(B64[(i + k) % 64])));
    s
}

/// FNV-1a, 32 bits (offset basis 0x811c9dc5, prime 0x01000193): the
/// `initrd_sum` the info guests print.
pub fn fnv1a32(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The `key=value` lines of a guest's serial output, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Every `key=value` line, in output order (a key may repeat, e.g. `e820`).
    pub facts: Vec<(String, String)>,
    /// Whether a line `done` was seen.
    pub done: bool,
}

impl Report {
    /// Parses serial output: lines are split on `\n`, a trailing `\r` is
    /// dropped, lines without `=` other than `done` are ignored.
    pub fn parse(output: &str) -> Report {
        let mut r = Report::default();
        for line in output.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line == "done" {
                r.done = true;
            } else if let Some((k, v)) = line.split_once('=') {
                r.facts.push((k.to_string(), v.to_string()));
            }
        }
        r
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.facts
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub fn get_all(&self, key: &str) -> Vec<&str> {
        self.facts
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of `key` as a number (`0x…` hex or decimal).
    pub fn num(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(parse_num)
    }
}

/// Parses `0x…` (hex) or decimal.
pub fn parse_num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &str) -> Vec<u8> {
        std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    struct ElfInfo {
        entry: u64,
        /// PT_LOAD (paddr, filesz, memsz)
        loads: Vec<(u64, u64, u64)>,
        /// PVH entry from a Xen type-18 note
        pvh: Option<u32>,
        /// number of PT_NOTE headers
        notes: usize,
    }

    fn parse_elf(b: &[u8]) -> ElfInfo {
        assert_eq!(&b[..4], b"\x7fELF");
        assert_eq!(b[4], 2, "ELFCLASS64");
        assert_eq!(b[5], 1, "little endian");
        assert_eq!(u16_at(b, 18), 62, "EM_X86_64");
        let entry = u64_at(b, 24);
        let phoff = u64_at(b, 32) as usize;
        assert_eq!(u16_at(b, 54), 56, "e_phentsize");
        let phnum = u16_at(b, 56) as usize;
        let mut loads = vec![];
        let mut pvh = None;
        let mut notes = 0;
        for i in 0..phnum {
            let ph = &b[phoff + i * 56..phoff + (i + 1) * 56];
            let (ptype, off, paddr) = (u32_at(ph, 0), u64_at(ph, 8) as usize, u64_at(ph, 24));
            let (filesz, memsz) = (u64_at(ph, 32), u64_at(ph, 40));
            if ptype == 1 {
                loads.push((paddr, filesz, memsz));
            } else if ptype == 4 {
                notes += 1;
                let mut p = off;
                while p + 12 <= off + filesz as usize {
                    let (namesz, descsz, ntype) = (
                        u32_at(b, p) as usize,
                        u32_at(b, p + 4) as usize,
                        u32_at(b, p + 8),
                    );
                    let name = &b[p + 12..p + 12 + namesz];
                    let desc = p + 12 + namesz.div_ceil(4) * 4;
                    if ntype == 18 && name == b"Xen\0" {
                        pvh = Some(u32_at(b, desc));
                    }
                    p = desc + descsz.div_ceil(4) * 4;
                }
            }
        }
        ElfInfo {
            entry,
            loads,
            pvh,
            notes,
        }
    }

    #[test]
    fn every_artifact_exists() {
        for (name, path) in ALL {
            let b = read(path);
            assert!(b.len() > 512, "{name} is too small");
            if path.ends_with(".elf") {
                assert_eq!(&b[..4], b"\x7fELF", "{name} is not an ELF");
            } else {
                assert_eq!(&b[0x202..0x206], b"HdrS", "{name} has no HdrS magic");
            }
        }
    }

    #[test]
    fn elf_guests_load_at_1mib_with_the_right_entry_kind() {
        for (name, path) in ALL {
            if !path.ends_with(".elf") {
                continue;
            }
            let ElfInfo {
                entry,
                loads,
                pvh,
                notes,
            } = parse_elf(&read(path));
            assert!(!loads.is_empty(), "{name}: no PT_LOAD");
            for (paddr, filesz, memsz) in &loads {
                assert_eq!(*paddr, 0x10_0000, "{name}: loaded at {paddr:#x}");
                // Code and data stay small; .bss (the vsock guest's buffers) may reach 4 MiB,
                // well inside the smallest guest memory the tests give.
                assert!(
                    filesz <= memsz && *filesz < 0x10_0000 && *memsz < 0x40_0000,
                    "{name}: {filesz:#x}/{memsz:#x}"
                );
            }
            assert_eq!(entry, 0x10_0000, "{name}: e_entry");
            let wants_pvh = !matches!(
                *name,
                "linux64_info" | "virtio_blk" | "echo_cmdline" | "acpi_linux64"
            );
            if wants_pvh {
                assert_eq!(pvh, Some(0x10_0000), "{name}: PVH note");
            } else {
                assert_eq!(pvh, None, "{name}: unexpected PVH note");
                assert_eq!(notes, 0, "{name}: unexpected PT_NOTE");
            }
        }
    }

    #[test]
    fn bzimage_header_is_what_linux_loader_reads() {
        let b = read(BZIMAGE_INFO);
        let setup_sects = usize::from(b[0x1f1]);
        assert_eq!(setup_sects, 1);
        let setup_len = (setup_sects + 1) * 512;
        assert_eq!(u16_at(&b, 0x1fe), 0xaa55);
        assert_eq!(&b[0x202..0x206], b"HdrS");
        assert!(u16_at(&b, 0x206) >= 0x020c);
        assert_eq!(b[0x211] & 1, 1, "LOADED_HIGH");
        assert_eq!(u16_at(&b, 0x236) & 1, 1, "XLF_KERNEL_64");
        assert_eq!(u32_at(&b, 0x214), 0x10_0000, "code32_start");
        assert_eq!(u64_at(&b, 0x258), 0x10_0000, "pref_address");
        assert_eq!(u32_at(&b, 0x238), 2047, "cmdline_size");
        let payload = &b[setup_len..];
        assert_eq!(
            u32_at(&b, 0x1f4) as usize,
            payload.len().div_ceil(16),
            "syssize"
        );
        let init_size = u32_at(&b, 0x260) as usize;
        assert!(init_size >= payload.len() && init_size.is_multiple_of(4096));
        // 64-bit entry at offset 0x200 of the protected-mode part: `mov $3, %edi` (BOOT_BZIMAGE64).
        assert_eq!(&payload[0x200..0x205], &[0xbf, 3, 0, 0, 0]);
        // 32-bit entry at offset 0: `mov $4, %eax` (BOOT_BZIMAGE32).
        assert_eq!(&payload[0..5], &[0xb8, 4, 0, 0, 0]);
    }

    #[test]
    fn flood_pattern() {
        assert_eq!(
            flood_line(0),
            "0000ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz01234567"
        );
        assert_eq!(
            flood_line(1),
            "0001BCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz012345678"
        );
        assert_eq!(
            flood_line(1023),
            "03ff/ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456"
        );
        assert!((0..FLOOD_LINES).all(|i| flood_line(i).len() == 64));
    }

    #[test]
    fn fnv_known_values() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn report_parsing() {
        let r = Report::parse("boot=pvh\r\ne820=0x0,0x9fc00,0x1\ne820=0x100000,0x1000,0x1\nnoise\ncmdline=a=b c\ndone\n");
        assert!(r.done);
        assert_eq!(r.get("boot"), Some("pvh"));
        assert_eq!(r.get("cmdline"), Some("a=b c"));
        assert_eq!(r.get_all("e820").len(), 2);
        assert_eq!(r.num("e820_count"), None);
        assert_eq!(parse_num("0x1f"), Some(31));
        assert_eq!(parse_num("12"), Some(12));
    }
}

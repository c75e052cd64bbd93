//! Builds the tiny freestanding test guests in `guests/` with the machine's C
//! compiler and linker into OUT_DIR: one ELF per guest (loaded at 1 MiB), and a
//! bzImage-shaped file for the bzImage guest.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How the VMM enters a guest.
#[derive(Clone, Copy)]
enum Entry {
    /// ELF with a PVH note; 32-bit entry `pvh_start`.
    Pvh,
    /// ELF without a PVH note; 64-bit entry `linux64_start` (= e_entry).
    Linux64,
    /// bzImage: setup sectors + protected-mode part (32-bit entry at 0, 64-bit at 0x200).
    BzImage,
    /// ELF with a PVH note, all in the guest's own sources (its own note and `pvh_start`): no entry
    /// stub, no runtime, no long mode. For guests that must cost nothing but their exits.
    PvhBare,
}

impl Entry {
    fn object(self) -> Option<&'static str> {
        Some(match self {
            Entry::PvhBare => return None,
            Entry::Pvh => "entry_pvh.S",
            Entry::Linux64 => "entry_linux64.S",
            Entry::BzImage => "entry_bzimage.S",
        })
    }

    fn symbol(self) -> &'static str {
        match self {
            Entry::Pvh | Entry::PvhBare => "pvh_start",
            Entry::Linux64 => "linux64_start",
            Entry::BzImage => "bzimage_start64",
        }
    }
}

struct Guest {
    name: &'static str,
    entry: Entry,
    sources: &'static [&'static str],
}

const GUESTS: &[Guest] = &[
    Guest {
        name: "pvh_info",
        entry: Entry::Pvh,
        sources: &["info.c"],
    },
    Guest {
        name: "linux64_info",
        entry: Entry::Linux64,
        sources: &["info.c"],
    },
    Guest {
        name: "bzimage_info",
        entry: Entry::BzImage,
        sources: &["info.c"],
    },
    Guest {
        name: "triple_fault",
        entry: Entry::Pvh,
        sources: &["triple_fault.c"],
    },
    Guest {
        name: "serial_flood",
        entry: Entry::Pvh,
        sources: &["serial_flood.c"],
    },
    Guest {
        name: "smp",
        entry: Entry::Pvh,
        sources: &["smp.c", "smp_tramp.S"],
    },
    Guest {
        name: "virtio_blk",
        entry: Entry::Linux64,
        sources: &["virtio_blk.c"],
    },
    Guest {
        name: "virtio_blk_pvh",
        entry: Entry::Pvh,
        sources: &["virtio_blk.c"],
    },
    Guest {
        name: "virtio_net",
        entry: Entry::Pvh,
        sources: &["virtio_net.c"],
    },
    Guest {
        name: "virtio_console",
        entry: Entry::Pvh,
        sources: &["virtio_console.c"],
    },
    Guest {
        name: "vsock",
        entry: Entry::Pvh,
        sources: &["vsock.c"],
    },
    Guest {
        name: "echo_cmdline",
        entry: Entry::Linux64,
        sources: &["echo_cmdline.c"],
    },
    Guest {
        name: "pvh_hang_internal_error",
        entry: Entry::Pvh,
        sources: &["int3.c"],
    },
    Guest {
        name: "null",
        entry: Entry::PvhBare,
        sources: &["null.S"],
    },
    Guest {
        name: "exit_cost_pio",
        entry: Entry::Pvh,
        sources: &["exit_cost_pio.c"],
    },
    Guest {
        name: "exit_cost_mmio",
        entry: Entry::Pvh,
        sources: &["exit_cost_mmio.c"],
    },
    Guest {
        name: "park",
        entry: Entry::Pvh,
        sources: &["park.c"],
    },
    Guest {
        name: "ticker",
        entry: Entry::Pvh,
        sources: &["ticker.c"],
    },
    Guest {
        name: "hostile",
        entry: Entry::Pvh,
        sources: &["hostile.c"],
    },
    Guest {
        name: "blk_writer",
        entry: Entry::Pvh,
        sources: &["blk_writer.c"],
    },
    Guest {
        name: "rate_probe",
        entry: Entry::Pvh,
        sources: &["rate_probe.c"],
    },
    Guest {
        name: "blk_bench",
        entry: Entry::Pvh,
        sources: &["blk_bench.c"],
    },
    Guest {
        name: "irq",
        entry: Entry::Pvh,
        sources: &["irq.c"],
    },
    Guest {
        name: "snap",
        entry: Entry::Pvh,
        sources: &["snap.c"],
    },
    Guest {
        name: "acpi",
        entry: Entry::Pvh,
        sources: &["acpi.c"],
    },
    Guest {
        name: "acpi_linux64",
        entry: Entry::Linux64,
        sources: &["acpi.c"],
    },
];

/// Real-mode entry stub of the bzImage guest.
const REALMODE_STUB: &str = "bzimage_setup16.S";

/// Sources linked into every guest.
const COMMON: &[&str] = &["rt.c", "entry_common.S"];

const CFLAGS: &[&str] = &[
    "-m64",
    "-ffreestanding",
    "-nostdlib",
    "-fno-pic",
    "-fno-pie",
    "-fno-stack-protector",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-mcmodel=small",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fcf-protection=none",
    "-O2",
    "-static",
    "-Wall",
    "-Wextra",
    "-std=gnu11",
];

/// Protected-mode load address of every guest (and the bzImage's code32_start).
const LOAD_ADDR: u32 = 0x10_0000;

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        panic!("{cmd:?} failed ({}):\n{stderr}", out.status);
    }
    for line in stderr.lines() {
        println!("cargo:warning={line}");
    }
}

fn tool(var: &str, default: &str) -> String {
    println!("cargo:rerun-if-env-changed={var}");
    env::var(var).unwrap_or_else(|_| default.to_string())
}

fn compile(cc: &str, src_dir: &Path, obj_dir: &Path, src: &str) -> PathBuf {
    let obj = obj_dir.join(format!("{}.o", src.replace('.', "_")));
    run(Command::new(cc)
        .args(CFLAGS)
        .arg("-I")
        .arg(src_dir)
        .arg("-c")
        .arg(src_dir.join(src))
        .arg("-o")
        .arg(&obj));
    obj
}

fn link(ld: &str, script: &Path, entry: &str, objs: &[PathBuf], out: &Path) {
    run(Command::new(ld)
        .args([
            "-nostdlib",
            "-static",
            "--build-id=none",
            "-z",
            "max-page-size=0x1000",
        ])
        .args(["-z", "noexecstack", "--no-warn-rwx-segments"])
        .arg("-T")
        .arg(script)
        .arg("-e")
        .arg(entry)
        .arg("-o")
        .arg(out)
        .args(objs));
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Wraps a flat protected-mode image (loaded at LOAD_ADDR, 32-bit entry at 0,
/// 64-bit entry at offset 0x200) into a bzImage: a boot sector and one setup
/// sector carrying the Linux setup header (boot protocol 2.12) and the
/// real-mode entry stub `realmode` (at file offset 0x280, reached through the
/// `jump` field at 0x200), then the protected-mode part.
fn make_bzimage(name: &str, realmode: &[u8], payload: &[u8]) -> Vec<u8> {
    const SETUP_SECTS: u8 = 1;
    const REALMODE_CODE: usize = 0x280;
    const VERSION_STR: usize = 0x3c0;
    let setup_len = (usize::from(SETUP_SECTS) + 1) * 512;
    let mut img = vec![0u8; setup_len];

    let msg = b"vmm test guest: not a bootable floppy\r\n";
    img[..msg.len()].copy_from_slice(msg);

    img[0x1f1] = SETUP_SECTS; // setup_sects
    put32(
        &mut img,
        0x1f4,
        u32::try_from(payload.len().div_ceil(16)).unwrap(),
    ); // syssize
    put16(&mut img, 0x1fe, 0xaa55); // boot_flag
    img[0x200] = 0xeb; // jump: jmp short to the real-mode stub
    img[0x201] = u8::try_from(REALMODE_CODE - 0x202).unwrap();
    img[0x202..0x206].copy_from_slice(b"HdrS"); // header
    put16(&mut img, 0x206, 0x020c); // version 2.12
    put16(&mut img, 0x20c, 0x1000); // start_sys_seg
    put16(&mut img, 0x20e, u16::try_from(VERSION_STR - 0x200).unwrap()); // kernel_version
    img[0x211] = 0x01; // loadflags: LOADED_HIGH
    put32(&mut img, 0x214, LOAD_ADDR); // code32_start
    put32(&mut img, 0x22c, 0x7fff_ffff); // initrd_addr_max
    put32(&mut img, 0x230, LOAD_ADDR); // kernel_alignment
    img[0x234] = 0; // relocatable_kernel: no
    img[0x235] = 12; // min_alignment: 4 KiB
    put16(&mut img, 0x236, 0x0001); // xloadflags: XLF_KERNEL_64
    put32(&mut img, 0x238, 2047); // cmdline_size (without the NUL)
    put64(&mut img, 0x258, u64::from(LOAD_ADDR)); // pref_address
    let init_size = payload.len().div_ceil(4096) * 4096;
    put32(&mut img, 0x260, u32::try_from(init_size).unwrap()); // init_size

    assert!(
        realmode.len() <= VERSION_STR - REALMODE_CODE,
        "real-mode stub too big"
    );
    img[REALMODE_CODE..REALMODE_CODE + realmode.len()].copy_from_slice(realmode);
    let ver = format!("vmm-test-guests {name}\0");
    img[VERSION_STR..VERSION_STR + ver.len()].copy_from_slice(ver.as_bytes());

    img.extend_from_slice(payload);
    img
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let src_dir = manifest.join("guests");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let obj_dir = out_dir.join("obj");
    fs::create_dir_all(&obj_dir).unwrap();
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=guests");
    for entry in fs::read_dir(&src_dir).unwrap() {
        println!("cargo:rerun-if-changed={}", entry.unwrap().path().display());
    }

    let cc = tool("TEST_GUESTS_CC", "gcc");
    let ld = tool("TEST_GUESTS_LD", "ld");
    let objcopy = tool("TEST_GUESTS_OBJCOPY", "objcopy");
    // linker.ld has a PT_NOTE for the PVH note; ELFs without the note get a
    // copy without that program header, so they carry no (empty) PT_NOTE.
    let script_pvh = src_dir.join("linker.ld");
    let text = fs::read_to_string(&script_pvh).unwrap();
    let no_note = text
        .replace("    note PT_NOTE;\n", "")
        .replace(":image :note", ":image");
    assert!(
        no_note != text && !no_note.contains(":note"),
        "linker.ld markers changed"
    );
    let script_no_note = out_dir.join("linker_no_note.ld");
    fs::write(&script_no_note, no_note).unwrap();

    let mut sources: Vec<&str> = COMMON.to_vec();
    sources.push(REALMODE_STUB);
    for g in GUESTS {
        sources.extend(g.entry.object());
        sources.extend_from_slice(g.sources);
    }
    sources.sort_unstable();
    sources.dedup();
    for src in &sources {
        compile(&cc, &src_dir, &obj_dir, src);
    }
    let obj = |src: &str| obj_dir.join(format!("{}.o", src.replace('.', "_")));

    for g in GUESTS {
        let mut objs: Vec<PathBuf> = g.entry.object().map(obj).into_iter().collect();
        if g.entry.object().is_some() {
            objs.extend(COMMON.iter().map(|s| obj(s)));
        }
        objs.extend(g.sources.iter().map(|s| obj(s)));
        let script = match g.entry {
            Entry::Pvh | Entry::PvhBare => &script_pvh,
            Entry::Linux64 | Entry::BzImage => &script_no_note,
        };
        match g.entry {
            Entry::Pvh | Entry::PvhBare | Entry::Linux64 => {
                link(
                    &ld,
                    script,
                    g.entry.symbol(),
                    &objs,
                    &out_dir.join(format!("{}.elf", g.name)),
                );
            }
            Entry::BzImage => {
                let elf = out_dir.join(format!("{}.payload.elf", g.name));
                let bin = out_dir.join(format!("{}.payload.bin", g.name));
                link(&ld, script, g.entry.symbol(), &objs, &elf);
                // Include .bss and the bootstrap tables as zeros, so that
                // init_size covers the whole image.
                run(Command::new(&objcopy)
                    .args([
                        "-O",
                        "binary",
                        "--set-section-flags",
                        ".bss=alloc,load,contents",
                        "--set-section-flags",
                        ".bootpgt=alloc,load,contents",
                    ])
                    .arg(&elf)
                    .arg(&bin));
                let payload = fs::read(&bin).unwrap();
                // The real-mode stub runs at CS offset 0x80 (file offset 0x280).
                let rm_elf = out_dir.join("bzimage_setup16.elf");
                let rm_bin = out_dir.join("bzimage_setup16.bin");
                run(Command::new(&ld)
                    .args(["-nostdlib", "-static", "--build-id=none", "-Ttext=0x80"])
                    .args(["-e", "_start", "-o"])
                    .arg(&rm_elf)
                    .arg(obj(REALMODE_STUB)));
                run(Command::new(&objcopy)
                    .args(["-O", "binary", "-j", ".text"])
                    .arg(&rm_elf)
                    .arg(&rm_bin));
                let realmode = fs::read(&rm_bin).unwrap();
                fs::write(
                    out_dir.join(format!("{}.bzImage", g.name)),
                    make_bzimage(g.name, &realmode, &payload),
                )
                .unwrap();
            }
        }
    }
}

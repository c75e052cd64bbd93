//! A newc cpio archive (the kernel's initramfs format, `Documentation/driver-api/early-userspace`)
//! holding the agent as /init, written in memory.

/// The initramfs for `agent`: the directories PID 1 mounts on, /dev/console (so that the kernel
/// gives init the console as stdio), and the agent as /init.
pub fn build(agent: &[u8]) -> Vec<u8> {
    // Room for every entry's 110-byte header, name and padding too, so that the agent's
    // megabytes are copied once, not again when the vector grows.
    let mut out = Vec::with_capacity(agent.len() + 4096);
    let mut ino = 1;
    let mut entry = |name: &str, mode: u32, rdev: (u32, u32), data: &[u8]| {
        push_entry(&mut out, ino, name, mode, rdev, data);
        ino += 1;
    };
    for dir in ["dev", "proc", "sys", "newroot", "tmp", "root"] {
        entry(dir, libc::S_IFDIR | 0o755, (0, 0), &[]);
    }
    entry("dev/console", libc::S_IFCHR | 0o600, (5, 1), &[]);
    entry("init", libc::S_IFREG | 0o755, (0, 0), agent);
    push_entry(&mut out, 0, "TRAILER!!!", 0, (0, 0), &[]);
    out
}

fn push_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let nlink = if mode & libc::S_IFMT == libc::S_IFDIR {
        2
    } else {
        1
    };
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len() as u32,
        0, // dev major
        0, // dev minor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the archive as the kernel does: (name, mode, data).
    fn entries(mut a: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut off = 0;
        loop {
            assert_eq!(&a[..6], b"070701", "magic at {off}");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&a[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name = std::str::from_utf8(&a[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(a[110 + namesize - 1], 0);
            let data_at = (110 + namesize).next_multiple_of(4);
            let data = a[data_at..data_at + size].to_vec();
            let next = (data_at + size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                assert_eq!(next, a.len());
                return out;
            }
            out.push((name, mode, data));
            off += next;
            a = &a[next..];
        }
    }

    #[test]
    fn the_archive_holds_init_and_what_it_mounts_on() {
        let agent = b"\x7fELF not really, 31 bytes long".to_vec();
        let archive = build(&agent);
        assert_eq!(archive.len() % 4, 0);
        let e = entries(&archive);
        let names: Vec<&str> = e.iter().map(|(n, ..)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "proc",
                "sys",
                "newroot",
                "tmp",
                "root",
                "dev/console",
                "init"
            ]
        );
        let init = &e[7];
        assert_eq!(init.1, libc::S_IFREG | 0o755);
        assert_eq!(init.2, agent);
        assert_eq!(e[6].1 & libc::S_IFMT, libc::S_IFCHR);
    }
}

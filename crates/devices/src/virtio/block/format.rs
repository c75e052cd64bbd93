//! Image formats: which one a file is (by its header, never its name), and the checks a qcow2
//! header must pass before the qcow2 layer reads anything it points to.
//!
//! The checks bound everything the header makes the VMM read or allocate: the cluster size
//! (512 B to 2 MiB, as QEMU), the L1 table (at most 32 MiB, inside the file, large enough for the
//! virtual size) and the refcount table (at most 8 MiB, inside the file; for an image that will
//! be written, with a refcount block for the header's own metadata); and they refuse what
//! the qcow2 layer does not do: encryption, external data files, zstd compression, extended L2
//! entries, images marked dirty or corrupt, and unknown incompatible features. Each failure is
//! one sentence that names the field and its value.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::qcow2::{file_len, Qcow2Disk};
use crate::Error;

/// The qcow2 magic, `QFI\xfb`.
pub(crate) const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
/// The most bytes of the header the checks read (the v3 header up to compression_type).
pub(crate) const HEADER_BYTES: usize = 105;
/// Largest L1 table (QEMU's bound too).
const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table (QEMU's bound too).
const MAX_REFTABLE_BYTES: u64 = 8 << 20;

/// Which format an image is served as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DiskFormat {
    /// Sector n of the disk is bytes 512·n.. of the file.
    Raw,
    /// QEMU's qcow2 (version 2 or 3), with its backing chain.
    Qcow2,
}

impl std::fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        })
    }
}

/// Whether the first bytes of a file are a qcow2 header (magic and version 2 or 3).
pub(crate) fn looks_like_qcow2(head: &[u8]) -> bool {
    head.len() >= 8 && head[..4] == QCOW2_MAGIC && matches!(be32(head, 4), 2 | 3)
}

/// Reads up to [`HEADER_BYTES`] from the start of `file` (fewer only at its end).
pub(crate) fn read_head(file: &File) -> std::io::Result<Vec<u8>> {
    let mut head = vec![0u8; HEADER_BYTES];
    let mut done = 0;
    while done < head.len() {
        match file.read_at(&mut head[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    head.truncate(done);
    Ok(head)
}

/// Opens the image in `file` (opened and locked; `id` its device and inode) as `forced`, or as
/// its header says: `Some((qcow2, cluster size))` for a qcow2 image, `None` for a raw one.
pub(crate) fn open_image(
    file: &File,
    path: &Path,
    forced: Option<DiskFormat>,
    writable: bool,
    id: (u64, u64),
) -> Result<Option<(Qcow2Disk, u64)>, Error> {
    let err = |reason: String| Error::DiskFormat {
        path: path.to_path_buf(),
        reason,
    };
    let head = read_head(file).map_err(|e| err(format!("cannot read its header: {e}")))?;
    let format = match forced {
        Some(format) => format,
        // The magic alone decides: a qcow2 file of another version is refused, not served raw.
        None if head.starts_with(&QCOW2_MAGIC) => DiskFormat::Qcow2,
        None => DiskFormat::Raw,
    };
    if format == DiskFormat::Raw {
        return Ok(None);
    }
    if !head.starts_with(&QCOW2_MAGIC) {
        return Err(err(
            "format=qcow2, but the file is not a qcow2 image (no QFI\\xfb magic)".into(),
        ));
    }
    let len = file_len(file).map_err(|e| err(e.to_string()))?;
    let header = check_qcow2_header(&head, len).map_err(err)?;
    if writable {
        check_refcount_coverage(file, &head, len).map_err(err)?;
    }
    let disk = Qcow2Disk::open(file, path, writable, id.0, id.1).map_err(err)?;
    log::debug!(
        "disk image '{}': qcow2, {} bytes, {} KiB clusters",
        path.display(),
        header.size,
        (1u64 << header.cluster_bits) >> 10
    );
    Ok(Some((disk, 1 << header.cluster_bits)))
}

/// The most bytes the image file at `path` may come to hold while a guest writes it (for
/// RLIMIT_FSIZE under the jail): a raw file never grows; a qcow2 file (by its magic) grows
/// with the clusters the guest allocates, up to its virtual size plus its tables (at most
/// 1/32 of that with 512-byte clusters), the slack a write may start past the end, and room
/// for clusters leaked by earlier crashes. 0 if the file cannot be read.
pub fn growth_bound(path: &Path) -> u64 {
    let Ok(file) = File::open(path) else {
        return 0;
    };
    let len = file_len(&file).unwrap_or(0);
    match read_head(&file) {
        Ok(head) if head.len() >= 32 && head.starts_with(&QCOW2_MAGIC) => {
            let size = be64(&head, 24);
            len.max(
                size.saturating_add(size / 32)
                    .saturating_add(2 * super::qcow2::WRITE_SLACK)
                    .saturating_add(len),
            )
        }
        _ => len,
    }
}

/// What the checks learnt from a qcow2 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Qcow2Header {
    pub(crate) cluster_bits: u32,
    /// The virtual disk size in bytes.
    pub(crate) size: u64,
}

/// Checks a qcow2 header (`head`: the file's first bytes) against a file of `file_len` bytes;
/// the error is one sentence naming the offending field.
pub(crate) fn check_qcow2_header(head: &[u8], file_len: u64) -> Result<Qcow2Header, String> {
    if head.len() < 72 || head[..4] != QCOW2_MAGIC {
        return Err("not a qcow2 image (no QFI\\xfb magic and 72-byte header)".into());
    }
    let version = be32(head, 4);
    if version != 2 && version != 3 {
        return Err(format!("qcow2 version {version} is not supported (2 or 3)"));
    }
    let cluster_bits = be32(head, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(format!(
            "qcow2 cluster_bits {cluster_bits} is outside 9..=21 (512 B to 2 MiB clusters)"
        ));
    }
    let cluster = 1u64 << cluster_bits;
    let size = be64(head, 24);
    let crypt = be32(head, 32);
    if crypt != 0 {
        return Err(format!(
            "encrypted qcow2 images are not supported (crypt_method {crypt})"
        ));
    }
    if version == 3 {
        if head.len() < 104 {
            return Err("qcow2 version 3 header is shorter than 104 bytes".into());
        }
        let incompatible = be64(head, 72);
        let named = [
            (
                0,
                "it is marked dirty (lazy refcounts): repair it with `qemu-img check -r all`",
            ),
            (
                1,
                "it is marked corrupt: repair it with `qemu-img check -r all`",
            ),
            (2, "external data files are not supported"),
            (3, "compression types other than zlib are not supported"),
            (4, "extended L2 entries (subclusters) are not supported"),
        ];
        for (bit, why) in named {
            if incompatible & (1 << bit) != 0 {
                return Err(format!("qcow2 incompatible feature bit {bit}: {why}"));
            }
        }
        if incompatible != 0 {
            return Err(format!(
                "qcow2 has unknown incompatible features {incompatible:#x}"
            ));
        }
    }
    // The L1 table: its size bounds memory; its place must be inside the file; it must map the
    // whole virtual disk.
    let l1_entries = u64::from(be32(head, 36));
    let l1_offset = be64(head, 40);
    if l1_entries * 8 > MAX_L1_BYTES {
        return Err(format!(
            "qcow2 L1 table of {l1_entries} entries is larger than {} MiB",
            MAX_L1_BYTES >> 20
        ));
    }
    // Bytes of disk one L1 entry maps: an L2 table of cluster/8 entries, each a cluster.
    let per_l1 = cluster * (cluster / 8);
    let needed = size.div_ceil(per_l1);
    if l1_entries < needed {
        return Err(format!(
            "qcow2 L1 table of {l1_entries} entries cannot map the virtual size of {size} bytes ({needed} needed)"
        ));
    }
    check_table("L1 table", l1_offset, l1_entries * 8, cluster, file_len)?;
    let rt_offset = be64(head, 48);
    let rt_bytes = u64::from(be32(head, 56)) * cluster;
    if rt_bytes > MAX_REFTABLE_BYTES {
        return Err(format!(
            "qcow2 refcount table of {rt_bytes} bytes is larger than {} MiB",
            MAX_REFTABLE_BYTES >> 20
        ));
    }
    if rt_bytes == 0 {
        return Err("qcow2 refcount table has no clusters".into());
    }
    check_table("refcount table", rt_offset, rt_bytes, cluster, file_len)?;
    Ok(Qcow2Header { cluster_bits, size })
}

/// Checks, for an image that will be written, that the refcount table has a refcount block for
/// the clusters the header says are in use (the header's own, the L1 table's, the refcount
/// table's), inside the file. The qcow2 layer allocates clusters through those blocks: with one
/// missing it takes in-use clusters for free and recurses without end making blocks for them.
/// (`head` passed [`check_qcow2_header`].)
fn check_refcount_coverage(file: &File, head: &[u8], file_len: u64) -> Result<(), String> {
    let cluster_bits = be32(head, 20);
    let cluster = 1u64 << cluster_bits;
    let order = match be32(head, 4) {
        3 => be32(head, 96),
        _ => 4,
    };
    if order > 6 {
        return Err(format!("qcow2 refcount_order {order} is outside 0..=6"));
    }
    let per_block = (cluster * 8) >> order;
    let rt_offset = be64(head, 48);
    let rt_entries = u64::from(be32(head, 56)) * cluster / 8;
    let l1_offset = be64(head, 40);
    let l1_bytes = u64::from(be32(head, 36)) * 8;
    let rt_bytes = rt_entries * 8;
    let mut blocks: Vec<u64> = [(0, 1), (l1_offset, l1_bytes), (rt_offset, rt_bytes)]
        .into_iter()
        .flat_map(|(offset, len)| {
            let first = offset / cluster / per_block;
            let last = (offset + len.max(1) - 1) / cluster / per_block;
            first..=last
        })
        .collect();
    blocks.sort_unstable();
    blocks.dedup();
    for block in blocks {
        if block >= rt_entries {
            return Err(format!(
                "qcow2 refcount table of {rt_entries} entries has no entry {block} for the image's own metadata: repair it with `qemu-img check -r all`"
            ));
        }
        let mut entry = [0u8; 8];
        file.read_exact_at(&mut entry, rt_offset + block * 8)
            .map_err(|e| format!("cannot read the qcow2 refcount table: {e}"))?;
        let at = u64::from_be_bytes(entry) & !(cluster - 1) & 0x00ff_ffff_ffff_ffff;
        if at == 0 || at.checked_add(cluster).is_none_or(|end| end > file_len) {
            return Err(format!(
                "qcow2 refcount table entry {block} ({at:#x}) is no refcount block inside the file, though the image's own metadata needs it: repair it with `qemu-img check -r all`"
            ));
        }
    }
    Ok(())
}

/// A metadata table must start on a cluster boundary and end inside the file.
fn check_table(
    what: &str,
    offset: u64,
    len: u64,
    cluster: u64,
    file_len: u64,
) -> Result<(), String> {
    if offset == 0 || !offset.is_multiple_of(cluster) {
        return Err(format!(
            "qcow2 {what} offset {offset:#x} is not a non-zero multiple of the cluster size {cluster}"
        ));
    }
    match offset.checked_add(len) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(format!(
            "qcow2 {what} at {offset:#x} ({len} bytes) ends beyond the file's {file_len} bytes"
        )),
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

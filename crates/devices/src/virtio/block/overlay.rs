//! `snapshot=on`: throw-away writes in front of a read-only image.
//!
//! The overlay is an anonymous temporary file (`O_TMPFILE | O_EXCL`, mode 0600): it never has a
//! name, cannot be given one, and its blocks go back to the file system when the last
//! descriptor closes, however the process ends (SIGKILL included). It is made in the image's
//! directory (a regular file's: that file system was big enough for the image), else in
//! `$TMPDIR`, else /var/tmp (on disk, where /tmp is often memory); a block device's overlay goes
//! straight to the second. It is sized like the image and stays sparse: only what the guest
//! writes takes space.
//!
//! Which sectors the guest has written is kept in memory, one bit per 512-byte sector. Every
//! virtio-blk request is whole, aligned sectors, so a write never needs a read-modify-write of a
//! larger block from the image: a read takes each run of written sectors from the overlay and
//! every other run from the image. The bits are kept in chunks of [`CHUNK_SECTORS`] (128 MiB of
//! disk, a 32 KiB bitmap) made on the first write into them, so the map costs memory in
//! proportion to the part of the disk written, not to the disk's size.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use log::debug;

use super::SECTOR_SIZE;
use crate::Error;

/// Sectors per chunk of the written-sector map.
const CHUNK_SECTORS: u64 = 1 << 18;
/// 64-bit words per chunk.
const CHUNK_WORDS: usize = (CHUNK_SECTORS / 64) as usize;

/// The overlay file and the map of the sectors it holds.
pub(crate) struct Overlay {
    pub(crate) file: File,
    /// Chunk index → one bit per sector, set once the guest wrote (or zeroed, or discarded) it.
    written: BTreeMap<u64, Box<[u64]>>,
}

/// One stretch of a request: `len` bytes from `offset`, in the overlay or in the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) in_overlay: bool,
}

impl Overlay {
    /// Creates the overlay of the image at `image`, `size` bytes long (see the module
    /// documentation for where). `beside_image`: try the image's directory first.
    pub(crate) fn create(image: &Path, beside_image: bool, size: u64) -> Result<Self, Error> {
        let err = |dir: &Path, error| Error::DiskOverlay {
            path: image.to_path_buf(),
            dir: dir.display().to_string(),
            error,
        };
        let fallback = temp_dir();
        let file = match beside_image.then(|| image_dir(image)) {
            Some(dir) => match anonymous_file(&dir) {
                Ok(file) => Ok((file, dir)),
                Err(e) => {
                    debug!(
                        "disk image '{}': no temporary file in '{}' ({e}); trying '{}'",
                        image.display(),
                        dir.display(),
                        fallback.display()
                    );
                    anonymous_file(&fallback).map(|f| (f, fallback.clone()))
                }
            },
            None => anonymous_file(&fallback).map(|f| (f, fallback.clone())),
        };
        let (file, dir) = file.map_err(|e| err(&fallback, e))?;
        file.set_len(size).map_err(|e| err(&dir, e))?;
        debug!(
            "disk image '{}': overlay of {size} bytes in '{}'",
            image.display(),
            dir.display()
        );
        Ok(Overlay {
            file,
            written: BTreeMap::new(),
        })
    }

    /// Marks `len` bytes from `offset` (whole sectors) as held by the overlay.
    pub(crate) fn mark(&mut self, offset: u64, len: u64) {
        let mut sector = offset / SECTOR_SIZE;
        let end = (offset + len).div_ceil(SECTOR_SIZE);
        while sector < end {
            let chunk = sector / CHUNK_SECTORS;
            let stop = end.min((chunk + 1) * CHUNK_SECTORS);
            let bits = self
                .written
                .entry(chunk)
                .or_insert_with(|| vec![0u64; CHUNK_WORDS].into_boxed_slice());
            for s in sector..stop {
                let bit = (s % CHUNK_SECTORS) as usize;
                bits[bit / 64] |= 1 << (bit % 64);
            }
            sector = stop;
        }
    }

    /// Whether the overlay holds `sector`.
    fn holds(&self, sector: u64) -> bool {
        self.written
            .get(&(sector / CHUNK_SECTORS))
            .is_some_and(|bits| {
                let bit = (sector % CHUNK_SECTORS) as usize;
                bits[bit / 64] & (1 << (bit % 64)) != 0
            })
    }

    /// Splits `len` bytes from `offset` (whole sectors) into runs that are all in the overlay or
    /// all in the image, in order.
    pub(crate) fn runs(&self, offset: u64, len: u64) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        let first = offset / SECTOR_SIZE;
        let end = (offset + len).div_ceil(SECTOR_SIZE);
        for sector in first..end {
            let in_overlay = self.holds(sector);
            match runs.last_mut() {
                Some(run) if run.in_overlay == in_overlay => run.len += SECTOR_SIZE,
                _ => runs.push(Run {
                    offset: sector * SECTOR_SIZE,
                    len: SECTOR_SIZE,
                    in_overlay,
                }),
            }
        }
        runs
    }
}

/// The directory of a regular image file ("." for a bare file name).
fn image_dir(image: &Path) -> PathBuf {
    match image.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `$TMPDIR` if set, else /var/tmp.
fn temp_dir() -> PathBuf {
    std::env::var_os("TMPDIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from)
}

/// An unnamed, unlinkable (O_EXCL) read-write file of mode 0600 in `dir`.
fn anonymous_file(dir: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE | libc::O_EXCL)
        .open(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> Overlay {
        Overlay {
            file: tempfile(),
            written: BTreeMap::new(),
        }
    }

    fn tempfile() -> File {
        anonymous_file(&std::env::temp_dir()).unwrap()
    }

    #[test]
    fn runs_follow_the_written_sectors_across_chunks() {
        let mut o = map();
        let s = SECTOR_SIZE;
        assert_eq!(
            o.runs(0, 4 * s),
            [Run {
                offset: 0,
                len: 4 * s,
                in_overlay: false
            }]
        );
        o.mark(s, s);
        // Across a chunk boundary.
        let edge = CHUNK_SECTORS * s;
        o.mark(edge - s, 2 * s);
        let runs = o.runs(0, 3 * s);
        assert_eq!(
            runs.iter()
                .map(|r| (r.offset / s, r.len / s, r.in_overlay))
                .collect::<Vec<_>>(),
            [(0, 1, false), (1, 1, true), (2, 1, false)]
        );
        let runs = o.runs(edge - 2 * s, 4 * s);
        assert_eq!(
            runs.iter()
                .map(|r| (r.len / s, r.in_overlay))
                .collect::<Vec<_>>(),
            [(1, false), (2, true), (1, false)]
        );
        assert_eq!(o.written.len(), 2, "one chunk per 128 MiB written into");
    }
}

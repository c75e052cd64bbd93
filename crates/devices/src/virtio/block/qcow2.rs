//! qcow2 images through the `imago` crate (its synchronous build: no async runtime).
//!
//! imago does the format (L1/L2 tables, refcounts, copy-on-write from the backing image,
//! compressed clusters, metadata caches that are written back in dependency order); this file
//! gives it the files and decides what may be opened:
//! * [`ImageFile`] is imago's storage: our own descriptor (opened and locked by the device, or
//!   by the gate below), served with preadv/pwritev/fallocate/fdatasync, the calls the file
//!   backend already declares. A write that would start more than [`WRITE_SLACK`] past the end
//!   of the file is refused (a hostile L2 entry cannot make the image file grow to petabytes);
//!   a read-only file refuses every write.
//! * [`ChainGate`] opens backing files (imago resolves a relative name against the image's
//!   directory, as QEMU does): read-only, locked as a reader, regular files or block devices
//!   only, at most [`MAX_BACKING_DEPTH`] of them, never one already in the chain (a loop), and
//!   never an external data file. A qcow2 backing file passes the same header checks as the
//!   image itself.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use imago::format::builder::FormatDriverBuilder;
use imago::format::gate::ImplicitOpenGate;
use imago::format::Format;
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::qcow2::Qcow2;
use imago::storage::drivers::CommonStorageHelper;
use imago::{FormatAccess, Storage, StorageOpenOptions};
use virtio_queue::desc::split::Descriptor;
use vm_memory::bitmap::Bitmap;
use vm_memory::GuestMemoryBackend;

use super::format::{check_qcow2_header, looks_like_qcow2, read_head};
use crate::GuestMemoryMmap;

/// The most backing files behind one image.
pub(crate) const MAX_BACKING_DEPTH: usize = 16;
/// How far past the current end of the file a write may start (new clusters are appended
/// there; a few metadata clusters may come before the data cluster).
pub(crate) const WRITE_SLACK: u64 = 64 << 20;

/// One file of a qcow2 chain, as imago's storage.
pub(crate) struct ImageFile {
    file: File,
    path: PathBuf,
    writable: bool,
    /// The file's length: every write goes through here, so it stays exact.
    len: AtomicU64,
    helper: CommonStorageHelper,
}

impl std::fmt::Debug for ImageFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ImageFile({:?})", self.path)
    }
}

impl std::fmt::Display for ImageFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path.display())
    }
}

impl ImageFile {
    pub(crate) fn new(file: File, path: PathBuf, writable: bool, len: u64) -> Self {
        ImageFile {
            file,
            path,
            writable,
            len: AtomicU64::new(len),
            helper: CommonStorageHelper::default(),
        }
    }

    fn check_write(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::other(format!(
                "'{}' is read-only",
                self.path.display()
            )));
        }
        let end_now = self.len.load(Ordering::Relaxed);
        if offset > end_now.saturating_add(WRITE_SLACK) || offset.checked_add(len).is_none() {
            return Err(io::Error::other(format!(
                "write of {len} bytes at {offset:#x}, far beyond the end of '{}' ({end_now:#x}): a corrupt table entry?",
                self.path.display()
            )));
        }
        Ok(())
    }

    fn grown_to(&self, end: u64) {
        self.len.fetch_max(end, Ordering::Relaxed);
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let offset = libc::off_t::try_from(offset).map_err(|_| einval())?;
        let len = libc::off_t::try_from(len).map_err(|_| einval())?;
        loop {
            // SAFETY: fallocate on a descriptor we own; no memory is involved.
            if unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset, len) } == 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

/// The guest memory behind the buffers `data` (already checked to be in guest memory), as
/// slices for imago's I/O vectors.
fn guest_slices<'a>(
    mem: &'a GuestMemoryMmap,
    data: &[Descriptor],
) -> io::Result<Vec<vm_memory::VolatileSlice<'a, ()>>> {
    data.iter()
        .flat_map(|d| mem.get_slices(d.addr(), d.len() as usize))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io::Error::other(e.to_string()))
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// Runs preadv/pwritev over `iov` from `offset` until all is moved; `None` from `op` is end of
/// file. Returns the bytes moved.
fn vectored(
    iov: &[libc::iovec],
    offset: u64,
    mut op: impl FnMut(&[libc::iovec], libc::off_t) -> isize,
) -> io::Result<u64> {
    let mut iov = iov.to_vec();
    let total: u64 = iov.iter().map(|v| v.iov_len as u64).sum();
    let (mut done, mut first) = (0u64, 0usize);
    while done < total {
        let at = libc::off_t::try_from(offset.saturating_add(done)).map_err(|_| einval())?;
        let end = iov.len().min(first + 1024);
        let n = op(&iov[first..end], at);
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            break;
        }
        done += n as u64;
        super::request::skip_iovecs(&mut iov, &mut first, n as usize);
    }
    Ok(done)
}

impl Storage for ImageFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.len.load(Ordering::Relaxed))
    }

    fn resolve_relative_path<P: AsRef<Path>>(&self, relative: P) -> io::Result<PathBuf> {
        let relative = relative.as_ref();
        if relative.is_absolute() {
            return Ok(relative.to_path_buf());
        }
        Ok(match self.path.parent() {
            Some(dir) => dir.join(relative),
            None => relative.to_path_buf(),
        })
    }

    fn get_filename(&self) -> Option<PathBuf> {
        Some(self.path.clone())
    }

    unsafe fn pure_readv(&self, bufv: IoVectorMut<'_>, offset: u64) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        // SAFETY: the iovecs describe `bufv`'s buffers, alive and writable for this call.
        let iov = unsafe { bufv.as_iovec() };
        let done = vectored(iov, offset, |iov, at| {
            // SAFETY: valid descriptor; at most 1024 iovecs describing live, writable buffers.
            unsafe { libc::preadv(fd, iov.as_ptr(), iov.len() as libc::c_int, at) }
        })?;
        // Past the end of the file reads as zeroes (as in QEMU).
        if done < bufv.len() {
            bufv.split_tail_at(done).fill(0);
        }
        Ok(())
    }

    unsafe fn pure_writev(&self, bufv: IoVector<'_>, offset: u64) -> io::Result<()> {
        self.check_write(offset, bufv.len())?;
        let fd = self.file.as_raw_fd();
        // SAFETY: the iovecs describe `bufv`'s buffers, alive and readable for this call.
        let iov = unsafe { bufv.as_iovec() };
        let done = vectored(iov, offset, |iov, at| {
            // SAFETY: valid descriptor; at most 1024 iovecs describing live buffers.
            unsafe { libc::pwritev(fd, iov.as_ptr(), iov.len() as libc::c_int, at) }
        })?;
        self.grown_to(offset + done);
        if done < bufv.len() {
            return Err(io::ErrorKind::WriteZero.into());
        }
        Ok(())
    }

    unsafe fn pure_write_zeroes(&self, offset: u64, length: u64) -> io::Result<()> {
        self.check_write(offset, length)?;
        match self.fallocate(libc::FALLOC_FL_ZERO_RANGE, offset, length) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                use std::os::unix::fs::FileExt;
                let zeroes = vec![0u8; 64 * 1024];
                let mut done = 0u64;
                while done < length {
                    let n = (length - done).min(zeroes.len() as u64) as usize;
                    self.file.write_all_at(&zeroes[..n], offset + done)?;
                    done += n as u64;
                }
            }
            Err(e) => return Err(e),
        }
        self.grown_to(offset + length);
        Ok(())
    }

    unsafe fn pure_write_allocated_zeroes(&self, offset: u64, length: u64) -> io::Result<()> {
        // SAFETY: the same contract as ours.
        unsafe { self.pure_write_zeroes(offset, length) }
    }

    unsafe fn pure_discard(&self, offset: u64, length: u64) -> io::Result<()> {
        self.check_write(offset, length)?;
        match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            length,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            other => other,
        }
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        if self.writable {
            self.file.sync_data()?;
        }
        Ok(())
    }

    unsafe fn invalidate_cache(&self) -> io::Result<()> {
        Ok(())
    }

    fn get_storage_helper(&self) -> &CommonStorageHelper {
        &self.helper
    }
}

/// Opens the backing files of a chain (see the module documentation).
pub(crate) struct ChainGate {
    /// (device, inode) of every file in the chain so far, the image itself first.
    chain: Vec<(u64, u64)>,
    /// The header check of the last file opened, if it looked like qcow2.
    last_check: Option<Result<(), String>>,
}

impl ChainGate {
    fn new(chain: Vec<(u64, u64)>) -> Self {
        ChainGate {
            chain,
            last_check: None,
        }
    }
}

impl ImplicitOpenGate<ImageFile> for ChainGate {
    fn open_format<F: FormatDriverBuilder<ImageFile>>(
        &mut self,
        builder: F,
    ) -> io::Result<FormatAccess<ImageFile>> {
        match F::FORMAT {
            Format::Raw => {}
            Format::Qcow2 => {
                if let Some(Err(why)) = self.last_check.take() {
                    return Err(io::Error::other(why));
                }
            }
            other => {
                return Err(io::Error::other(format!(
                    "backing format {other:?} is not supported (raw or qcow2)"
                )))
            }
        }
        let driver = builder
            .write(false)
            .open(ChainGate::new(self.chain.clone()))?;
        Ok(FormatAccess::new(driver))
    }

    fn open_storage(&mut self, opts: StorageOpenOptions) -> io::Result<ImageFile> {
        let Some(path) = opts.get_filename().map(Path::to_path_buf) else {
            return Err(io::Error::other("a backing file without a name"));
        };
        if opts.get_writable() {
            // Backing files are opened read-only: only an external data file asks to write.
            return Err(io::Error::other(format!(
                "external data file '{}': not supported",
                path.display()
            )));
        }
        if self.chain.len() > MAX_BACKING_DEPTH {
            return Err(io::Error::other(format!(
                "backing chain deeper than {MAX_BACKING_DEPTH} files at '{}'",
                path.display()
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("'{}': {e}", path.display())))?;
        let meta = file.metadata()?;
        let kind = meta.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(io::Error::other(format!(
                "backing file '{}' is {}, not a regular file or a block device",
                path.display(),
                crate::file_kind(meta.mode())
            )));
        }
        // SAFETY: fcntl on a descriptor we own; no memory is involved.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let id = (meta.dev(), meta.ino());
        if self.chain.contains(&id) {
            return Err(io::Error::other(format!(
                "backing chain loops: '{}' is already in it",
                path.display()
            )));
        }
        super::lock::lock(&file, &path, true).map_err(|e| io::Error::other(e.to_string()))?;
        let len = file_len(&file)?;
        let head = read_head(&file)?;
        self.last_check = looks_like_qcow2(&head)
            .then(|| check_qcow2_header(&head, len).map(|_| ()))
            .map(|r| r.map_err(|why| format!("backing file '{}': {why}", path.display())));
        self.chain.push(id);
        Ok(ImageFile::new(file, path, false, len))
    }
}

/// The length of a file or block device (seek to its end; its metadata says 0 for the latter).
pub(crate) fn file_len(file: &File) -> io::Result<u64> {
    use std::io::Seek;
    let mut f = file;
    f.seek(io::SeekFrom::End(0))
}

/// An open qcow2 image and its backing chain.
pub(crate) struct Qcow2Disk {
    access: FormatAccess<ImageFile>,
    writable: bool,
}

impl Qcow2Disk {
    /// Opens the qcow2 image in `file` (already opened and locked, its header checked;
    /// `dev`/`ino` its identity), then opens it and its backing chain through imago. The error is one
    /// line (the caller names the image).
    pub(crate) fn open(
        file: &File,
        path: &Path,
        writable: bool,
        dev: u64,
        ino: u64,
    ) -> Result<Self, String> {
        let len = file_len(file).map_err(|e| e.to_string())?;
        let own = file.try_clone().map_err(|e| e.to_string())?;
        let storage = ImageFile::new(own, path.to_path_buf(), writable, len);
        let driver = Qcow2::<ImageFile>::builder(storage)
            .write(writable)
            .open(ChainGate::new(vec![(dev, ino)]))
            .map_err(|e| one_line(&e))?;
        Ok(Qcow2Disk {
            access: FormatAccess::new(driver),
            writable,
        })
    }

    /// The virtual disk size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.access.size()
    }

    /// Reads `len(data)` bytes from `offset` into the guest's buffers `data` (already checked
    /// to be in guest memory and device-writable).
    pub(crate) fn read(
        &self,
        mem: &GuestMemoryMmap,
        data: &[Descriptor],
        offset: u64,
    ) -> io::Result<()> {
        let slices = guest_slices(mem, data)?;
        let (bufv, _guard) = IoVectorMut::from_volatile_slice(&slices);
        let result = self.access.readv(bufv, offset);
        for s in &slices {
            s.bitmap().mark_dirty(0, s.len());
        }
        result
    }

    /// Writes the guest's buffers `data` at `offset`.
    pub(crate) fn write(
        &self,
        mem: &GuestMemoryMmap,
        data: &[Descriptor],
        offset: u64,
    ) -> io::Result<()> {
        let slices = guest_slices(mem, data)?;
        let (bufv, _guard) = IoVector::from_volatile_slice(&slices);
        let result = self.access.writev(bufv, offset);
        self.write_back(result)
    }

    /// After every request that changes mappings: imago's cached L2 tables and refcount blocks
    /// go to the file (page cache, no fdatasync), refcounts first. A kill -9 between requests
    /// then leaves at worst leaked clusters, never a table entry whose cluster has no refcount
    /// (which the next allocation would hand out twice). imago writes a new L2 table's L1
    /// entry before the refcount of that table's cluster: a kill inside such a request can
    /// still leave that one error (see DESIGN.md, qcow2).
    fn write_back(&self, result: io::Result<()>) -> io::Result<()> {
        let flushed = self.access.flush();
        result.and(flushed)
    }

    /// Writes the cached metadata back, then fdatasync: what the guest wrote before is on disk.
    pub(crate) fn flush(&self) -> io::Result<()> {
        if !self.writable {
            return Ok(());
        }
        self.access.flush()?;
        self.access.sync()
    }

    /// DISCARD: frees the clusters (they read back as zeroes).
    pub(crate) fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let result = self.access.discard_to_any(offset, len);
        self.write_back(result)
    }

    /// WRITE_ZEROES: zero clusters (freed with `unmap`, kept allocated without).
    pub(crate) fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let result = if unmap {
            self.access.discard_to_zero(offset, len)
        } else {
            self.access.write_zeroes(offset, len)
        };
        self.write_back(result)
    }
}

/// imago's error text on one line.
fn one_line(e: &io::Error) -> String {
    e.to_string().replace('\n', "; ")
}

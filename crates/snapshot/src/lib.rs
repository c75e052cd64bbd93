//! The on-disk format of a vmm snapshot: a directory holding two files.
//!
//! `state`: a 32-byte header, then the body, the VM's saved state as UTF-8 JSON (whatever
//! serializable struct the VMM hands [`SnapshotDir::write_state`]):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic, `VMMSNAP\n` |
//! | 8 | 4 | format version, little-endian ([`FORMAT_VERSION`]) |
//! | 12 | 4 | reserved, 0 |
//! | 16 | 8 | body length in bytes, little-endian (at most [`MAX_BODY`]) |
//! | 24 | 4 | CRC-32 (IEEE) of the body, little-endian |
//! | 28 | 4 | reserved, 0 |
//!
//! `memory`: the guest's RAM, its regions back to back in guest-physical order; pages that were
//! all zeros are holes. Its length is the RAM size the state names.
//!
//! Both files are written under temporary names, synced and renamed, the state last, so a
//! directory holds either a whole snapshot, the previous one, or no state file at all. Files are
//! created 0600 (guest memory holds the guest's secrets); the directory, if made here, 0700. A
//! directory is written only if it is the writer's own and nobody else can write it, and then
//! through a descriptor of it ([`SnapshotDir`]): no symbolic link is followed, no path looked up
//! again.
//! Reading checks the magic, the version, the length and the checksum before the body is
//! parsed, so a truncated, corrupted or foreign file is an error naming what is wrong.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The state file's name in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file's name in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// The first bytes of a state file.
pub const MAGIC: [u8; 8] = *b"VMMSNAP\n";
/// The version of this layout (the header and the files); the body's own shape is versioned
/// by the VMM inside it.
pub const FORMAT_VERSION: u32 = 1;
/// The header's length.
pub const HEADER_LEN: usize = 32;
/// The largest body read back: a state is a few hundred KiB even with many vCPUs.
pub const MAX_BODY: u64 = 64 << 20;
/// The flags a snapshot directory is opened with (read-only, a directory, never through a link).
pub const DIR_OPEN_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
/// The flags each file of a snapshot is created with (a new file only, never through a link).
pub const FILE_CREATE_FLAGS: libc::c_int =
    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
/// The granule of holes in the memory file.
const PAGE: usize = 4096;
/// What a hole reads as (compared with memcmp, many times faster than byte by byte).
static ZERO_PAGE: [u8; PAGE] = [0; PAGE];

/// What went wrong with a snapshot directory or file, naming it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be made, opened, read or written.
    #[error("{what} '{}': {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The host's error.
        #[source]
        source: std::io::Error,
    },
    /// The path exists but is not what a snapshot needs there.
    #[error("'{}' {why}", path.display())]
    NotUsable {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        why: &'static str,
    },
    /// The state file does not start with the magic.
    #[error("'{}' is not a vmm snapshot state file (bad magic)", path.display())]
    BadMagic {
        /// The state file.
        path: PathBuf,
    },
    /// The state file was written by a build with another layout.
    #[error("'{}' has snapshot format version {found}; this vmm reads version {expected}", path.display())]
    Version {
        /// The state file.
        path: PathBuf,
        /// The version in the header.
        found: u32,
        /// [`FORMAT_VERSION`].
        expected: u32,
    },
    /// The state file is shorter than its header says, or longer.
    #[error("'{}' is truncated or has trailing bytes: the header says {expected} bytes of state, the file has {found}", path.display())]
    Length {
        /// The state file.
        path: PathBuf,
        /// The body length the header gives.
        expected: u64,
        /// The bytes after the header.
        found: u64,
    },
    /// The header's body length is beyond [`MAX_BODY`].
    #[error("'{}' claims {length} bytes of state, more than the {MAX_BODY} a snapshot may have", path.display())]
    TooLong {
        /// The state file.
        path: PathBuf,
        /// The length claimed.
        length: u64,
    },
    /// The body's checksum does not match the header's.
    #[error("'{}' is corrupted: its checksum is {found:#010x}, the header says {expected:#010x}", path.display())]
    Checksum {
        /// The state file.
        path: PathBuf,
        /// The header's CRC.
        expected: u32,
        /// The body's CRC.
        found: u32,
    },
    /// The body is not the state this build expects.
    #[error("'{}': cannot read the saved state: {source}", path.display())]
    Body {
        /// The state file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The memory file's length is not the guest's RAM size.
    #[error("'{}' has {found} bytes, the snapshot's guest has {expected} bytes of RAM (truncated or from another snapshot)", path.display())]
    MemoryLength {
        /// The memory file.
        path: PathBuf,
        /// The RAM size.
        expected: u64,
        /// The file's length.
        found: u64,
    },
}

/// The result of this crate's functions.
pub type Result<T> = std::result::Result<T, Error>;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

/// The bytes of a state file holding `state`.
pub fn encode<T: Serialize>(state: &T) -> std::result::Result<Vec<u8>, serde_json::Error> {
    let body = serde_json::to_vec(state)?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Checks a state file's header against its `body_len` bytes that follow it, and returns the
/// body's length and CRC as the header gives them. `path` is for errors.
fn check_header(header: &[u8; HEADER_LEN], body_len: u64, path: &Path) -> Result<(u64, u32)> {
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    if header[..8] != MAGIC {
        return Err(Error::BadMagic { path: path.into() });
    }
    let version = word(8);
    if version != FORMAT_VERSION {
        return Err(Error::Version {
            path: path.into(),
            found: version,
            expected: FORMAT_VERSION,
        });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[16..24]);
    let length = u64::from_le_bytes(len);
    if length > MAX_BODY {
        return Err(Error::TooLong {
            path: path.into(),
            length,
        });
    }
    if length != body_len {
        return Err(Error::Length {
            path: path.into(),
            expected: length,
            found: body_len,
        });
    }
    Ok((length, word(24)))
}

/// The state in the bytes of a state file (`path` is for errors).
pub fn decode<T: DeserializeOwned>(bytes: &[u8], path: &Path) -> Result<T> {
    let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        // Too short for a header: a foreign file, or a state file cut inside its header.
        let n = bytes.len().min(MAGIC.len());
        if bytes[..n] != MAGIC[..n] {
            return Err(Error::BadMagic { path: path.into() });
        }
        return Err(Error::Length {
            path: path.into(),
            expected: HEADER_LEN as u64,
            found: bytes.len() as u64,
        });
    };
    let (_, crc) = check_header(header, body.len() as u64, path)?;
    let found = crc32fast::hash(body);
    if found != crc {
        return Err(Error::Checksum {
            path: path.into(),
            expected: crc,
            found,
        });
    }
    serde_json::from_slice(body).map_err(|source| Error::Body {
        path: path.into(),
        source,
    })
}

/// A snapshot directory being written, held open: every file is made, renamed and removed
/// relative to this descriptor, so a path swapped after the checks changes nothing.
pub struct SnapshotDir {
    dir: File,
    path: PathBuf,
}

impl SnapshotDir {
    /// Makes `path` (mode 0700) unless it exists, and opens it. It must be a directory, not a
    /// symbolic link, owned by this process's effective user and writable by nobody else: a
    /// snapshot holds the guest's memory, and a directory another user can write is one where
    /// they could put links or files of their own.
    pub fn create(path: &Path) -> Result<SnapshotDir> {
        match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("cannot create the snapshot directory", path)(e)),
        }
        let not_usable = |why| Error::NotUsable {
            path: path.into(),
            why,
        };
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(DIR_OPEN_FLAGS)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOTDIR) | Some(libc::ELOOP) => {
                    not_usable("is not a directory (a symbolic link is not followed)")
                }
                _ => io("cannot open the snapshot directory", path)(e),
            })?;
        let meta = file.metadata().map_err(io("cannot inspect", path))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        if meta.uid() != unsafe { libc::geteuid() } {
            return Err(not_usable("belongs to another user"));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(not_usable(
                "is writable by other users: give a directory only its owner can write",
            ));
        }
        let dir = SnapshotDir {
            dir: file,
            path: path.into(),
        };
        dir.check_contents()?;
        Ok(dir)
    }

    /// The directory must be new, empty or hold a snapshot (its two files, and the temporary
    /// names of an interrupted one): a directory of other files is not one to put `state` and
    /// `memory` into, replacing files of those names.
    fn check_contents(&self) -> Result<()> {
        let ours = [
            STATE_FILE,
            MEMORY_FILE,
            ".state.tmp",
            ".memory.tmp",
            ".",
            "..",
        ];
        let refuse = |why| Error::NotUsable {
            path: self.path.clone(),
            why,
        };
        let mut buf = vec![0u8; 4096];
        loop {
            // SAFETY: getdents64 writes at most `buf.len()` bytes into `buf`, which outlives the
            // call, from the directory descriptor this struct owns.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    self.dir.as_raw_fd(),
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            };
            if n < 0 {
                return Err(io("cannot list", &self.path)(
                    std::io::Error::last_os_error(),
                ));
            }
            if n == 0 {
                return Ok(());
            }
            // Records: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name NUL-terminated.
            let mut at = 0usize;
            while at + 19 < n as usize {
                let reclen = usize::from(u16::from_ne_bytes([buf[at + 16], buf[at + 17]]));
                if reclen < 20 || at + reclen > n as usize {
                    return Err(refuse("cannot be listed"));
                }
                let kind = buf[at + 18];
                let name = &buf[at + 19..at + reclen];
                let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                let name = std::str::from_utf8(name).unwrap_or("");
                if !ours.contains(&name) {
                    return Err(refuse(
                        "holds other files: give a new or empty directory, or one holding a vmm snapshot",
                    ));
                }
                let dir_entry = name == "." || name == "..";
                if !dir_entry && kind != libc::DT_REG && kind != libc::DT_UNKNOWN {
                    return Err(refuse("holds a snapshot file that is not a regular file"));
                }
                at += reclen;
            }
        }
    }

    /// The directory's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn c_name(name: &str) -> CString {
        // Names are this module's constants, without NUL bytes.
        CString::new(name).unwrap_or_default()
    }

    /// Removes `name` from the directory, if it is there (never following a link).
    fn remove(&self, name: &str) {
        let name = Self::c_name(name);
        // SAFETY: the descriptor is an open directory and `name` a NUL-terminated string that
        // outlives the call.
        unsafe { libc::unlinkat(self.dir.as_raw_fd(), name.as_ptr(), 0) };
    }

    /// Creates `name`, a new regular file of mode 0600, in the directory.
    fn create_file(&self, name: &str) -> Result<File> {
        let c = Self::c_name(name);
        // SAFETY: as in `remove`; the mode is passed as the variadic argument O_CREAT needs.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                c.as_ptr(),
                FILE_CREATE_FLAGS,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io("cannot create", &self.path.join(name))(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: openat returned a new descriptor that nothing else owns.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Renames `from` to `to` inside the directory, replacing `to`.
    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let (f, t) = (Self::c_name(from), Self::c_name(to));
        let dir = self.dir.as_raw_fd();
        // SAFETY: as in `remove`, for both names.
        if unsafe { libc::renameat(dir, f.as_ptr(), dir, t.as_ptr()) } != 0 {
            return Err(io("cannot rename into", &self.path.join(to))(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Writes `state` as the [`STATE_FILE`] (see the module documentation). Call it after
    /// [`MemoryWriter::commit`]: the state file is what makes the directory a snapshot.
    pub fn write_state<T: Serialize>(&self, state: &T) -> Result<()> {
        let bytes = encode(state).map_err(|source| Error::Body {
            path: self.path.join(STATE_FILE),
            source,
        })?;
        let mut pending = Pending::create(self, STATE_FILE)?;
        pending
            .file
            .write_all(&bytes)
            .map_err(io("cannot write", &self.path.join(&pending.tmp)))?;
        pending.commit()?;
        // The renames themselves must reach the disk.
        let _ = self.dir.sync_all();
        Ok(())
    }

    /// Starts the memory file. The state file of a snapshot already in the directory is removed
    /// first: until the new state is written the directory holds no snapshot, never a new memory
    /// file beside an old state.
    pub fn memory_writer(&self) -> Result<MemoryWriter<'_>> {
        self.remove(STATE_FILE);
        Ok(MemoryWriter {
            pending: Pending::create(self, MEMORY_FILE)?,
            written: 0,
        })
    }
}

/// A file being written under a temporary name, renamed to its own name by
/// [`Pending::commit`] (and removed if dropped before).
struct Pending<'a> {
    dir: &'a SnapshotDir,
    file: File,
    tmp: String,
    name: &'static str,
    committed: bool,
}

impl<'a> Pending<'a> {
    fn create(dir: &'a SnapshotDir, name: &'static str) -> Result<Pending<'a>> {
        let tmp = format!(".{name}.tmp");
        // A leftover of an interrupted snapshot.
        dir.remove(&tmp);
        let file = dir.create_file(&tmp)?;
        Ok(Pending {
            dir,
            file,
            tmp,
            name,
            committed: false,
        })
    }

    fn commit(mut self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(io("cannot sync", &self.dir.path.join(&self.tmp)))?;
        self.dir.rename(&self.tmp, self.name)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.dir.remove(&self.tmp);
        }
    }
}

/// Opens `path` to read: never through a symbolic link, never blocking (a FIFO or device
/// would), and only a regular file of this process's user (or root's) that nobody else can write:
/// a snapshot names host files to open (its disks) and holds the guest's code, so one another
/// user could have written is not restored.
fn open_own_file(path: &Path, what: &'static str) -> Result<(File, std::fs::Metadata)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Error::NotUsable {
                path: path.into(),
                why: "is a symbolic link (not followed)",
            },
            _ => io(what, path)(e),
        })?;
    let meta = file.metadata().map_err(io("cannot inspect", path))?;
    let not_usable = |why| Error::NotUsable {
        path: path.into(),
        why,
    };
    if !meta.is_file() {
        return Err(not_usable("is not a regular file"));
    }
    check_owner(&meta).map_err(not_usable)?;
    Ok((file, meta))
}

/// A file or directory of this process's user (or root's) that nobody else can write.
fn check_owner(meta: &std::fs::Metadata) -> std::result::Result<(), &'static str> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && meta.uid() != 0 {
        return Err("belongs to another user");
    }
    if meta.mode() & 0o022 != 0 {
        return Err("is writable by other users: a snapshot must be writable only by its owner");
    }
    Ok(())
}

/// Checks that the snapshot directory `dir` is its user's and writable by nobody else (as
/// [`open_own_file`] checks its files).
pub fn check_dir(dir: &Path) -> Result<()> {
    let meta = std::fs::metadata(dir).map_err(io("cannot open the snapshot directory", dir))?;
    if !meta.is_dir() {
        return Err(Error::NotUsable {
            path: dir.into(),
            why: "is not a directory",
        });
    }
    check_owner(&meta).map_err(|why| Error::NotUsable {
        path: dir.into(),
        why,
    })
}

/// Reads and checks `dir`/[`STATE_FILE`].
pub fn read_state<T: DeserializeOwned>(dir: &Path) -> Result<T> {
    check_dir(dir)?;
    let path = dir.join(STATE_FILE);
    let (mut file, meta) = open_own_file(&path, "cannot open the snapshot state")?;
    if meta.len() > MAX_BODY + HEADER_LEN as u64 {
        return Err(Error::TooLong {
            path,
            length: meta.len(),
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    (&mut file)
        .take(MAX_BODY + HEADER_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io("cannot read", &path))?;
    decode(&bytes, &path)
}

/// Writes guest memory into the [`MEMORY_FILE`] in order, leaving holes for zero pages.
pub struct MemoryWriter<'a> {
    pending: Pending<'a>,
    written: u64,
}

impl MemoryWriter<'_> {
    /// Appends `bytes` (the next part of guest RAM); whole zero pages become holes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let Pending { file, tmp, dir, .. } = &mut self.pending;
        let path = || dir.path.join(&*tmp);
        for page in bytes.chunks(PAGE) {
            if page == &ZERO_PAGE[..page.len()] {
                file.seek(SeekFrom::Current(page.len() as i64))
                    .map_err(|e| io("cannot seek in", &path())(e))?;
            } else {
                file.write_all(page)
                    .map_err(|e| io("cannot write", &path())(e))?;
            }
        }
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Sets the file's length (a trailing hole), syncs it and gives it its name. Returns the
    /// bytes of RAM written.
    pub fn commit(self) -> Result<u64> {
        let MemoryWriter { pending, written } = self;
        pending.file.set_len(written).map_err(io(
            "cannot set the length of",
            &pending.dir.path.join(&pending.tmp),
        ))?;
        pending.commit()?;
        Ok(written)
    }
}

/// Opens `dir`/[`MEMORY_FILE`] to map it, checking that it is a regular file of `ram_bytes`.
pub fn open_memory(dir: &Path, ram_bytes: u64) -> Result<File> {
    let path = dir.join(MEMORY_FILE);
    let (file, meta) = open_own_file(&path, "cannot open the snapshot memory")?;
    if meta.len() != ram_bytes {
        return Err(Error::MemoryLength {
            path,
            expected: ram_bytes,
            found: meta.len(),
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct S {
        a: u64,
        b: Vec<u8>,
    }

    fn sample() -> S {
        S {
            a: 7,
            b: vec![1, 2, 3],
        }
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("snapshot-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_state_round_trips() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(&bytes[..8], b"VMMSNAP\n");
        assert_eq!(decode::<S>(&bytes, Path::new("s")).unwrap(), sample());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode(&sample()).unwrap();
        for end in 0..bytes.len() {
            let err = decode::<S>(&bytes[..end], Path::new("s")).unwrap_err();
            assert!(
                matches!(err, Error::Length { .. } | Error::BadMagic { .. }),
                "{end}: {err}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(b' ');
        assert!(matches!(
            decode::<S>(&longer, Path::new("s")),
            Err(Error::Length { .. })
        ));
    }

    #[test]
    fn every_flipped_bit_is_an_error() {
        let bytes = encode(&sample()).unwrap();
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            // Reserved fields are not checked; everything else is.
            if (12..16).contains(&(i / 8)) || (28..32).contains(&(i / 8)) {
                continue;
            }
            assert!(decode::<S>(&b, Path::new("s")).is_err(), "bit {i}");
        }
    }

    #[test]
    fn versions_magic_and_lengths_are_named() {
        let mut b = encode(&sample()).unwrap();
        b[8] = 9;
        let e = decode::<S>(&b, Path::new("/d/state")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "'/d/state' has snapshot format version 9; this vmm reads version 1"
        );
        let e = decode::<S>(
            b"NOTASNAPSHOT-at-all-but-long-enough-to-hold-a-header",
            Path::new("x"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("bad magic"), "{e}");
        let mut b = encode(&sample()).unwrap();
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode::<S>(&b, Path::new("x")),
            Err(Error::TooLong { .. })
        ));
        // The right frame around a body of another shape.
        let other = encode(&vec!["x"]).unwrap();
        assert!(matches!(
            decode::<S>(&other, Path::new("x")),
            Err(Error::Body { .. })
        ));
    }

    #[test]
    fn files_round_trip_with_holes_and_private_modes() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tmpdir("files");
        SnapshotDir::create(&dir).unwrap();
        let snap = SnapshotDir::create(&dir).unwrap();
        let mut mem = snap.memory_writer().unwrap();
        let mut ram = vec![0u8; 64 << 10];
        ram[5000] = 0xaa;
        mem.write(&ram).unwrap();
        mem.write(&vec![0u8; 1 << 20]).unwrap();
        assert_eq!(mem.commit().unwrap(), (64 << 10) + (1 << 20));
        snap.write_state(&sample()).unwrap();
        assert_eq!(read_state::<S>(&dir).unwrap(), sample());
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let file = open_memory(&dir, (64 << 10) + (1 << 20)).unwrap();
        let meta = file.metadata().unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // One 4 KiB page of data: the rest are holes.
        assert!(meta.blocks() * 512 <= 64 << 10, "{} blocks", meta.blocks());
        let back = std::fs::read(dir.join(MEMORY_FILE)).unwrap();
        assert_eq!(back[5000], 0xaa);
        assert_eq!(back.iter().filter(|&&b| b != 0).count(), 1);
        assert!(matches!(
            open_memory(&dir, 4096),
            Err(Error::MemoryLength { .. })
        ));
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_of_other_files_is_refused_and_a_new_memory_file_never_sits_beside_an_old_state()
    {
        let dir = tmpdir("contents");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("notes"), b"mine").unwrap();
        let e = SnapshotDir::create(&dir).err().unwrap();
        assert!(e.to_string().contains("holds other files"), "{e}");
        assert_eq!(std::fs::read(dir.join("notes")).unwrap(), b"mine");
        std::fs::remove_file(dir.join("notes")).unwrap();
        // A snapshot, then a second one that fails after its memory file: no state is left
        // to pair with the new memory.
        let snap = SnapshotDir::create(&dir).unwrap();
        snap.memory_writer().unwrap().commit().unwrap();
        snap.write_state(&sample()).unwrap();
        let again = SnapshotDir::create(&dir).unwrap();
        let writer = again.memory_writer().unwrap();
        assert!(!dir.join(STATE_FILE).exists());
        drop(writer);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_fifo_or_a_link_in_a_snapshot_is_refused_without_waiting() {
        let dir = tmpdir("fifo");
        std::fs::create_dir(&dir).unwrap();
        let fifo = std::ffi::CString::new(dir.join(STATE_FILE).to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let e = read_state::<S>(&dir).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        std::os::unix::fs::symlink("/etc/hostname", dir.join(MEMORY_FILE)).unwrap();
        let e = open_memory(&dir, 4096).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_in_the_way_of_the_directory_is_refused() {
        let dir = tmpdir("notdir");
        std::fs::write(&dir, b"x").unwrap();
        assert!(matches!(
            SnapshotDir::create(&dir),
            Err(Error::NotUsable { .. })
        ));
        let _ = std::fs::remove_file(&dir);
        // A link to a directory is not followed; a directory others can write is refused.
        let target = tmpdir("target");
        std::fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&target, &dir).unwrap();
        let e = SnapshotDir::create(&dir).err().unwrap();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        std::fs::remove_file(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = SnapshotDir::create(&target).err().unwrap();
        assert!(e.to_string().contains("writable by other users"), "{e}");
        std::fs::remove_dir(&target).unwrap();
        assert!(matches!(
            read_state::<S>(Path::new("/nonexistent-vmm-snapshot")),
            Err(Error::Io { .. })
        ));
    }
}

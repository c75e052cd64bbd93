//! What a VM is made of: the configuration an embedder (or the CLI) hands to [`crate::Vm::new`].

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use devices::chardev::{FileOptions, SocketFile, DEFAULT_FILE_MAX};

/// Guest memory when none is asked for: 128 MiB.
pub const DEFAULT_MEMORY_BYTES: u64 = 128 << 20;

/// The tag of the root share ([`VmConfig::root_share`]).
pub const ROOT_SHARE_TAG: &str = "vmmroot";

/// The kernel command line used when the caller gives none.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";

/// The kernel command line used when the caller gives none and the virtio console is on: the
/// kernel console on hvc0.
pub const DEFAULT_CONSOLE_CMDLINE: &str = "console=hvc0 reboot=k panic=1 pci=off";

/// A console backend: where a guest console's output goes and where its input comes from (for
/// the serial port COM1 and for the virtio console).
pub enum CharBackend {
    /// No backend: the virtio console is absent; the serial port is present but its output is
    /// discarded.
    Off,
    /// The VMM's standard output, with standard input as the input (at most one device may own
    /// stdin).
    Stdio,
    /// The VMM's standard output, no input.
    Stdout,
    /// A file, output only: created (mode 0600) or appended to (emptied first with
    /// [`FileOptions::truncate`]), never through a symbolic link; output beyond
    /// [`FileOptions::max_bytes`] is dropped and counted.
    File(PathBuf, FileOptions),
    /// A new pseudo-terminal (its path is reported by [`crate::Vm::ptys`]).
    Pty,
    /// A unix socket listening at this path; one client at a time (others are refused); output
    /// is kept (up to 1 MiB) while no client is connected. Created mode 0600; refused if
    /// anything is at the path; removed at the end if it is still the VMM's socket.
    Socket(PathBuf),
    /// A [`CharBackend::Socket`] bound beforehand (the CLI binds before entering a jail, so that
    /// the jail's supervisor knows which socket to remove).
    BoundSocket(SocketFile),
    /// Any writer, e.g. a pipe a test reads; output only.
    Writer(Box<dyn Write + Send>),
}

/// The old name of [`CharBackend`], kept for embedders (`SerialOutput::Writer(w)`,
/// `SerialOutput::Stdout`).
pub type SerialOutput = CharBackend;

impl CharBackend {
    /// Whether the backend is anything but [`CharBackend::Off`].
    pub fn is_on(&self) -> bool {
        !matches!(self, CharBackend::Off)
    }

    /// Whether the backend reads the VMM's standard input.
    pub fn owns_stdin(&self) -> bool {
        matches!(self, CharBackend::Stdio)
    }

    /// The host file or socket path the backend writes to, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            CharBackend::File(p, _) | CharBackend::Socket(p) => Some(p),
            CharBackend::BoundSocket(s) => Some(s.path()),
            _ => None,
        }
    }
}

impl fmt::Debug for CharBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CharBackend::Off => f.write_str("Off"),
            CharBackend::Stdio => f.write_str("Stdio"),
            CharBackend::Stdout => f.write_str("Stdout"),
            CharBackend::File(p, o) if *o == FileOptions::default() => {
                write!(f, "File({})", p.display())
            }
            CharBackend::File(p, o) => write!(
                f,
                "File({}, max {}{})",
                p.display(),
                o.max_bytes,
                if o.truncate { ", truncate" } else { "" }
            ),
            CharBackend::BoundSocket(s) => write!(f, "BoundSocket({})", s.path().display()),
            CharBackend::Pty => f.write_str("Pty"),
            CharBackend::Socket(p) => write!(f, "Socket({})", p.display()),
            CharBackend::Writer(_) => f.write_str("Writer(..)"),
        }
    }
}

impl FromStr for CharBackend {
    type Err = ParseError;

    /// Parses `off`, `stdio`, `file=PATH[,max=SIZE][,truncate=on]`, `pty` or `socket=PATH`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = "use off, stdio, file=PATH[,max=SIZE][,truncate=on], pty or socket=PATH";
        let path = |p: &str, what: &str| {
            if p.is_empty() {
                Err(ParseError(format!("'{s}' has no {what} path; {usage}")))
            } else {
                Ok(PathBuf::from(p))
            }
        };
        match s {
            "off" | "none" => Ok(CharBackend::Off),
            "stdio" => Ok(CharBackend::Stdio),
            "pty" => Ok(CharBackend::Pty),
            _ => {
                if let Some(rest) = s.strip_prefix("file=") {
                    let mut parts = rest.split(',');
                    let p = path(parts.next().unwrap_or_default(), "file")?;
                    let mut options = FileOptions::default();
                    for part in parts {
                        match part.split_once('=') {
                            Some(("max", v)) => options.max_bytes = parse_file_size(v)?,
                            Some(("truncate", v)) => {
                                options.truncate = parse_switch("truncate", v)?
                            }
                            _ => {
                                return Err(ParseError(format!(
                                    "'{part}' in '{s}' is not max=SIZE or truncate=on|off \
                                     (a file path cannot contain ','); {usage}"
                                )))
                            }
                        }
                    }
                    Ok(CharBackend::File(p, options))
                } else if let Some(p) = s.strip_prefix("socket=") {
                    Ok(CharBackend::Socket(path(p, "socket")?))
                } else {
                    Err(ParseError(format!(
                        "unknown console backend '{s}'; {usage}"
                    )))
                }
            }
        }
    }
}

/// Parses an output file's size cap: bytes, with an optional binary `K`, `M`, `G` or `T` suffix.
fn parse_file_size(value: &str) -> Result<u64, ParseError> {
    let err = || {
        ParseError(format!(
            "max={value} is not a size; give bytes with an optional K, M, G or T suffix (binary: \
             1G = 1 GiB), at least 1"
        ))
    };
    let (digits, shift) = match value.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => match c.to_ascii_uppercase() {
            'K' => (&value[..i], 10),
            'M' => (&value[..i], 20),
            'G' => (&value[..i], 30),
            'T' => (&value[..i], 40),
            _ => return Err(err()),
        },
        _ => (value, 0),
    };
    let n: u64 = digits.parse().map_err(|_| err())?;
    match n.checked_mul(1 << shift) {
        Some(bytes) if bytes > 0 => Ok(bytes),
        _ => Err(err()),
    }
}

/// Where the interrupt controllers and the PIT are emulated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum IrqChip {
    /// [`IrqChip::Split`] when KVM supports it, else [`IrqChip::Kernel`].
    #[default]
    Auto,
    /// KVM emulates the local APICs; the VMM emulates the I/O APIC (each pin the guest unmasks
    /// becomes an MSI route, so interrupts stay in the kernel) and the 8254 PIT. There is no 8259
    /// PIC: a guest probing it finds none (Linux: "Using NULL legacy PIC"). A VM with no in-kernel
    /// I/O APIC, PIC or PIT is also torn down without waiting for the SRCU grace periods those
    /// bring (DESIGN.md, Interrupts, has the cost).
    Split,
    /// KVM emulates the local APICs, the I/O APIC, both 8259 PICs and the PIT
    /// (KVM_CREATE_IRQCHIP, KVM_CREATE_PIT2): for guests that need a PIC.
    Kernel,
}

impl FromStr for IrqChip {
    type Err = ParseError;

    /// Parses `auto`, `split` or `kernel`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(IrqChip::Auto),
            "split" => Ok(IrqChip::Split),
            "kernel" => Ok(IrqChip::Kernel),
            _ => Err(ParseError(format!(
                "unknown irqchip '{s}'; use auto, split or kernel"
            ))),
        }
    }
}

/// One virtio-blk disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskConfig {
    /// The image file (or block device) backing the disk.
    pub path: PathBuf,
    /// `format=raw|qcow2`: force the image format; `None` (the default) detects it by the
    /// file's header (qcow2 magic and version), never by its name.
    pub format: Option<devices::virtio::block::DiskFormat>,
    /// Expose the disk read-only (VIRTIO_BLK_F_RO) and open the file read-only.
    pub read_only: bool,
    /// The serial the guest reads with VIRTIO_BLK_T_GET_ID (at most 20 bytes).
    pub id: Option<String>,
    /// Bytes/s and requests/s limits (`bw=`, `iops=`); unlimited by default. A throttled
    /// request waits; it never fails.
    pub rate_limit: RateLimitConfig,
    /// `snapshot=on`: the guest's writes go to an anonymous temporary overlay, gone when vmm
    /// exits; the image is opened read-only and never written. No effect with `read_only`.
    pub snapshot: bool,
    /// `aio=sync|io_uring`: how requests reach the image; by default io_uring where it works.
    pub aio: Aio,
}

pub use devices::virtio::block::Aio;

pub use devices::rate_limiter::{BucketConfig, RateLimitConfig};

/// The rate-limit keys of `--disk` (`ops` is `iops`) and `--net` (`ops` is `pps`), collected
/// while parsing and checked together at the end.
#[derive(Default)]
struct RateLimitKeys {
    bw: Option<u64>,
    bw_burst: Option<u64>,
    ops: Option<u64>,
    ops_burst: Option<u64>,
}

impl RateLimitKeys {
    /// Takes `key=value` if it is one of the rate-limit keys; `Ok(false)` if it is not.
    fn take(&mut self, ops_key: &str, key: &str, value: &str) -> Result<bool, ParseError> {
        let ops_burst_key = format!("{ops_key}_burst");
        match key {
            "bw" => self.bw = Some(parse_rate(key, value, true)?),
            "bw_burst" => self.bw_burst = Some(parse_rate(key, value, true)?),
            k if k == ops_key => self.ops = Some(parse_rate(key, value, false)?),
            k if k == ops_burst_key => self.ops_burst = Some(parse_rate(key, value, false)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn finish(self, ops_key: &str) -> Result<RateLimitConfig, ParseError> {
        let bucket = |rate: Option<u64>, burst: Option<u64>, key: &str| {
            if rate.is_none() && burst.is_some() {
                return Err(ParseError(format!(
                    "{key}_burst is set without {key}; give {key}= too (the burst is the bucket size of that limit)"
                )));
            }
            Ok(rate.map(|rate| BucketConfig { rate, burst }))
        };
        Ok(RateLimitConfig {
            bytes: bucket(self.bw, self.bw_burst, "bw")?,
            ops: bucket(self.ops, self.ops_burst, ops_key)?,
        })
    }
}

/// Parses a positive rate or burst: a number, for bytes with an optional binary `K`, `M` or `G`
/// suffix (`50M` = 50 MiB).
fn parse_rate(key: &str, value: &str, bytes: bool) -> Result<u64, ParseError> {
    let usage = if bytes {
        "bytes per second (or bytes for a burst), with an optional K, M or G suffix (binary: 50M = 50 MiB)"
    } else {
        "a whole number per second (or a count for a burst)"
    };
    let (digits, shift) = match value.char_indices().last() {
        Some((i, c)) if bytes && c.is_ascii_alphabetic() => match c.to_ascii_uppercase() {
            'K' => (&value[..i], 10),
            'M' => (&value[..i], 20),
            'G' => (&value[..i], 30),
            _ if value[..i].parse::<u64>().is_ok() => {
                return Err(ParseError(format!(
                    "{key}={value} has an unknown unit; use {usage}"
                )))
            }
            _ => (value, 0),
        },
        _ => (value, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| ParseError(format!("{key}={value} is not a number; use {usage}")))?;
    if n == 0 {
        return Err(ParseError(format!(
            "{key}={value}: must be at least 1; leave {key} out for no limit"
        )));
    }
    n.checked_mul(1 << shift)
        .ok_or_else(|| ParseError(format!("{key}={value} is too large")))
}

/// An option value that could not be parsed; the message names the value and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl FromStr for DiskConfig {
    type Err = ParseError;

    /// Parses `PATH[,format=raw|qcow2][,readonly=on|off][,snapshot=on|off][,aio=sync|io_uring][,id=NAME][,bw=RATE][,iops=N][,bw_burst=SIZE][,iops_burst=N]`,
    /// or the same with `path=PATH` as the first item.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let first = parts.next().unwrap_or_default();
        let path = first.strip_prefix("path=").unwrap_or(first);
        if path.is_empty() {
            return Err(ParseError(format!(
                "disk '{s}' has no image path; the form is PATH[,readonly=on][,id=NAME]"
            )));
        }
        let mut disk = DiskConfig {
            path: PathBuf::from(path),
            ..DiskConfig::default()
        };
        let mut limits = RateLimitKeys::default();
        for part in parts {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                ParseError(format!(
                    "disk option '{part}' is not key=value; the form is PATH[,readonly=on][,id=NAME]"
                ))
            })?;
            match key {
                "readonly" | "ro" => disk.read_only = parse_switch(key, value)?,
                "snapshot" => disk.snapshot = parse_switch(key, value)?,
                "aio" => {
                    disk.aio = match value {
                        "sync" => Aio::Sync,
                        "io_uring" => Aio::IoUring,
                        _ => {
                            return Err(ParseError(format!(
                                "aio={value} is not known; use aio=sync or aio=io_uring (leave it out for the fastest that works)"
                            )))
                        }
                    }
                }
                "format" => {
                    use devices::virtio::block::DiskFormat;
                    disk.format = Some(match value {
                        "raw" => DiskFormat::Raw,
                        "qcow2" => DiskFormat::Qcow2,
                        _ => {
                            return Err(ParseError(format!(
                                "disk format '{value}' is not raw or qcow2"
                            )))
                        }
                    })
                }
                "id" => {
                    if value.is_empty() || value.len() > 20 || !value.is_ascii() {
                        return Err(ParseError(format!(
                            "disk id '{value}' must be 1 to 20 ASCII characters"
                        )));
                    }
                    disk.id = Some(value.to_string());
                }
                _ if limits.take("iops", key, value)? => {}
                _ => {
                    return Err(ParseError(format!(
                        "unknown disk option '{key}'; known options: format=raw|qcow2, readonly=on|off, snapshot=on|off, aio=sync|io_uring, id=NAME, bw=RATE, iops=N, bw_burst=SIZE, iops_burst=N"
                    )))
                }
            }
        }
        disk.rate_limit = limits.finish("iops")?;
        Ok(disk)
    }
}

/// One virtio-net NIC over a host tap device.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetConfig {
    /// The tap device's name on the host.
    pub tap: String,
    /// The guest's MAC address; by default a stable, locally administered one derived from the
    /// tap name.
    pub mac: Option<[u8; 6]>,
    /// Create the tap (and bring it up) if it does not exist.
    pub create: bool,
    /// Bytes/s and frames/s limits (`bw=`, `pps=`), applied to each direction on its own;
    /// unlimited by default.
    pub rate_limit: RateLimitConfig,
}

impl NetConfig {
    /// The MAC the guest sees: the one asked for, or the one derived from the tap name.
    pub fn guest_mac(&self) -> [u8; 6] {
        self.mac
            .unwrap_or_else(|| devices::virtio::net::mac_from_name(&self.tap))
    }
}

const NET_USAGE: &str = "the form is tap=NAME[,mac=52:54:00:12:34:56][,create=on]";

impl FromStr for NetConfig {
    type Err = ParseError;

    /// Parses `tap=NAME[,mac=MAC][,create=on|off][,bw=RATE][,pps=N][,bw_burst=SIZE][,pps_burst=N]`
    /// (the keys in any order).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut tap = None;
        let mut mac = None;
        let mut create = false;
        let mut limits = RateLimitKeys::default();
        for part in s.split(',') {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                ParseError(format!("net option '{part}' is not key=value; {NET_USAGE}"))
            })?;
            match key {
                "tap" => {
                    let max = devices::virtio::net::MAX_NAME_LEN;
                    if value.is_empty() || value.len() > max || value.contains(['/', ' ', '\0']) {
                        return Err(ParseError(format!(
                            "net tap '{value}' is not an interface name (1 to {max} characters, no '/' or spaces)"
                        )));
                    }
                    tap = Some(value.to_string());
                }
                "mac" => mac = Some(parse_mac(value)?),
                "create" => create = parse_switch(key, value)?,
                _ if limits.take("pps", key, value)? => {}
                _ => {
                    return Err(ParseError(format!(
                    "unknown net option '{key}'; known options: tap=NAME, mac=MAC, create=on|off, bw=RATE, pps=N, bw_burst=SIZE, pps_burst=N"
                )))
                }
            }
        }
        let tap = tap.ok_or_else(|| ParseError(format!("net '{s}' names no tap; {NET_USAGE}")))?;
        let rate_limit = limits.finish("pps")?;
        Ok(NetConfig {
            tap,
            mac,
            create,
            rate_limit,
        })
    }
}

/// The virtio-vsock device: the guest's CID and the Unix socket host programs connect to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VsockConfig {
    /// The guest's CID (3 to 2^32 - 2).
    pub cid: u64,
    /// Host programs connect here (`CONNECT <port>\n`, answered `OK <host port>\n`); a guest
    /// connection to host port P goes to the socket `PATH_P`.
    pub socket: PathBuf,
    /// Guest connections go to `<file name of PATH>_P` in the working directory instead (the
    /// CLI's jail makes the working directory PATH's directory, and PATH is unreachable by its
    /// name from inside). Off when parsed, and not kept in a snapshot (the CLI sets it again
    /// for a jailed restore).
    #[serde(skip)]
    pub connect_by_name: bool,
}

/// A host directory shared with the guest over virtio-fs:
/// `HOSTDIR[:GUESTDIR][,tag=NAME][,readonly=on]`. The guest mounts it with
/// `mount -t virtiofs NAME DIR`; `vmm run`'s agent mounts it at GUESTDIR (by default HOSTDIR's
/// own absolute path).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShareConfig {
    /// The host directory.
    pub dir: PathBuf,
    /// Where `vmm run`'s agent mounts it in the guest (absolute; no white space).
    #[serde(default)]
    pub guest_dir: Option<PathBuf>,
    /// The tag the guest mounts it by (1 to 36 bytes); empty when parsed without one, and then
    /// named by [`name_shares`].
    pub tag: String,
    /// Every write refused (the server's mount of it is read-only).
    pub read_only: bool,
}

/// `shares` with those parsed without a tag named `share0`, `share1`, … (by position); two
/// shares with one tag are refused.
pub fn name_shares(shares: &[ShareConfig]) -> crate::Result<Vec<ShareConfig>> {
    let mut named = shares.to_vec();
    for (i, share) in named.iter_mut().enumerate() {
        if share.tag.is_empty() {
            share.tag = format!("share{i}");
        }
    }
    for (i, share) in named.iter().enumerate() {
        if named[..i].iter().any(|s| s.tag == share.tag) {
            return Err(crate::Error::ShareTagTwice {
                tag: share.tag.clone(),
            });
        }
    }
    Ok(named)
}

const SHARE_USAGE: &str = "the form is HOSTDIR[:GUESTDIR][,tag=NAME][,readonly=on]";

impl ShareConfig {
    /// Where the guest should see it: GUESTDIR, or HOSTDIR made absolute.
    pub fn guest_path(&self) -> PathBuf {
        self.guest_dir
            .clone()
            .unwrap_or_else(|| std::path::absolute(&self.dir).unwrap_or_else(|_| self.dir.clone()))
    }
}

impl FromStr for ShareConfig {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let mut parts = s.split(',');
        let first = parts.next().unwrap_or_default();
        let (dir, guest_dir) = match first.split_once(':') {
            Some((dir, guest)) => (dir, Some(guest)),
            None => (first, None),
        };
        if dir.is_empty() || dir.contains('=') {
            return Err(ParseError(format!(
                "share '{s}' does not start with the host directory; {SHARE_USAGE}"
            )));
        }
        if let Some(g) = guest_dir {
            if !g.starts_with('/')
                || g.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '"')
            {
                return Err(ParseError(format!(
                    "share guest directory '{g}': an absolute path without white space or '\"' (it is passed on the guest's command line)"
                )));
            }
        }
        let (mut tag, mut read_only) = (String::new(), false);
        for part in parts {
            match part.split_once('=') {
                Some(("tag", t)) => {
                    if t.is_empty()
                        || t.len() > devices::virtio::fs::TAG_LEN
                        || t.contains(|c: char| {
                            c == ':' || c == '"' || c.is_whitespace() || c.is_control()
                        })
                    {
                        return Err(ParseError(format!(
                            "share tag '{t}': a tag is 1 to 36 bytes, without ':', '\"' or white space"
                        )));
                    }
                    tag = t.to_string();
                }
                Some(("readonly" | "ro", v)) => read_only = parse_switch("readonly", v)?,
                Some((key, _)) => {
                    return Err(ParseError(format!(
                        "unknown share option '{key}'; known options: tag=NAME, readonly=on|off"
                    )))
                }
                None => {
                    return Err(ParseError(format!(
                        "share option '{part}' is not key=value; {SHARE_USAGE}"
                    )))
                }
            }
        }
        Ok(ShareConfig {
            dir: PathBuf::from(dir),
            guest_dir: guest_dir.map(PathBuf::from),
            tag,
            read_only,
        })
    }
}

/// The most host sockets a virtio-vsock device holds at once (connections and host programs
/// that have not yet said where to); the jail's descriptor limit makes room for them.
pub const VSOCK_MAX_CONNS: usize = devices::virtio::vsock::MAX_CONNS;

const VSOCK_USAGE: &str = "the form is cid=N,socket=PATH";

impl FromStr for VsockConfig {
    type Err = ParseError;

    /// Parses `cid=N,socket=PATH` (in either order).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (mut cid, mut socket) = (None, None);
        for part in s.split(',') {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                ParseError(format!(
                    "vsock option '{part}' is not key=value; {VSOCK_USAGE}"
                ))
            })?;
            match key {
                "cid" => {
                    let n: u64 = value
                        .parse()
                        .map_err(|_| ParseError(format!("vsock cid '{value}' is not a number")))?;
                    if !(3..u64::from(u32::MAX)).contains(&n) {
                        return Err(ParseError(format!(
                            "vsock cid {n}: a guest's CID is 3 to 4294967294 (0 to 2 are reserved)"
                        )));
                    }
                    cid = Some(n);
                }
                "socket" if !value.is_empty() => socket = Some(PathBuf::from(value)),
                "socket" => {
                    return Err(ParseError(format!(
                        "vsock socket path is empty; {VSOCK_USAGE}"
                    )))
                }
                _ => {
                    return Err(ParseError(format!(
                        "unknown vsock option '{key}'; known options: cid=N, socket=PATH"
                    )))
                }
            }
        }
        match (cid, socket) {
            (Some(cid), Some(socket)) => Ok(VsockConfig {
                cid,
                socket,
                connect_by_name: false,
            }),
            _ => Err(ParseError(format!(
                "vsock '{s}' needs both cid and socket; {VSOCK_USAGE}"
            ))),
        }
    }
}

/// Parses a unicast MAC address `aa:bb:cc:dd:ee:ff` (or with `-`).
fn parse_mac(value: &str) -> Result<[u8; 6], ParseError> {
    let bad = || {
        ParseError(format!(
            "net mac '{value}' is not a MAC address like 52:54:00:12:34:56"
        ))
    };
    let mut mac = [0u8; 6];
    let mut parts = value.split([':', '-']);
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(ParseError(format!(
            "net mac '{value}' is a multicast address; the first byte must be even (e.g. 52:54:00:12:34:56)"
        )));
    }
    Ok(mac)
}

fn parse_switch(key: &str, value: &str) -> Result<bool, ParseError> {
    match value {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(ParseError(format!("{key}={value}: expected on or off"))),
    }
}

/// Parses a memory size: `128M`, `2G`, `512K`, `1T`, or a plain number of MiB. Zero is refused.
pub fn parse_memory_size(s: &str) -> Result<u64, ParseError> {
    let t = s.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => {
                    return Err(ParseError(format!(
                        "memory size '{s}' has an unknown unit; use a number of MiB or a K, M, G or T suffix"
                    )))
                }
            };
            (&t[..i], shift)
        }
        _ => (t, 20),
    };
    let n: u64 = digits.parse().map_err(|_| {
        ParseError(format!(
            "memory size '{s}' is not a number; use e.g. 128M, 2G or 512 (MiB)"
        ))
    })?;
    if n == 0 {
        return Err(ParseError(format!(
            "memory size '{s}' is zero; give the guest at least 1M"
        )));
    }
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| ParseError(format!("memory size '{s}' is too large")))
}

/// An initial ramdisk: a file, or bytes the embedder made (e.g. an initramfs built in memory).
#[derive(Clone)]
pub enum Initrd {
    /// A regular file, read when the VM is built.
    File(PathBuf),
    /// The ramdisk itself.
    Bytes(std::sync::Arc<[u8]>),
}

impl Initrd {
    /// How errors name it: the file's path, or `(in-memory initrd)`.
    pub fn name(&self) -> PathBuf {
        match self {
            Initrd::File(p) => p.clone(),
            Initrd::Bytes(_) => PathBuf::from("(in-memory initrd)"),
        }
    }
}

impl fmt::Debug for Initrd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Initrd::File(p) => write!(f, "File({})", p.display()),
            Initrd::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
        }
    }
}

impl<P: Into<PathBuf>> From<P> for Initrd {
    fn from(path: P) -> Self {
        Initrd::File(path.into())
    }
}

/// Everything needed to build and boot one VM.
#[derive(Debug)]
pub struct VmConfig {
    /// ELF vmlinux (PVH entry if it has the note, 64-bit boot protocol otherwise) or bzImage.
    pub kernel: PathBuf,
    /// Optional initial ramdisk, loaded at the top of low memory.
    pub initrd: Option<Initrd>,
    /// Replaces [`DEFAULT_CMDLINE`]; the VMM still appends what it must (root device, virtio-mmio devices, host quirks).
    pub cmdline: Option<String>,
    /// Number of vCPUs (1 to the KVM limit).
    pub vcpus: u8,
    /// Guest RAM in bytes.
    pub memory_bytes: u64,
    /// virtio-blk disks, in order: /dev/vda, /dev/vdb, …
    pub disks: Vec<DiskConfig>,
    /// virtio-net NICs over host taps, in order: eth0, eth1, …
    pub nets: Vec<NetConfig>,
    /// The serial port COM1 (ttyS0): its backend. [`CharBackend::Off`] keeps the UART but
    /// discards its output.
    pub serial: CharBackend,
    /// The virtio console (hvc0), added after the disks and NICs; [`CharBackend::Off`] for none.
    /// When it is on and no command line is given, [`DEFAULT_CONSOLE_CMDLINE`] is used.
    pub console: CharBackend,
    /// A virtio-vsock device, added after the virtio console; none by default.
    pub vsock: Option<VsockConfig>,
    /// Host directories shared over virtio-fs, each with a server process of its own; added
    /// after the vsock device. A VM with shares cannot be snapshotted.
    pub shares: Vec<ShareConfig>,
    /// The guest's root file system from a host directory over virtio-fs (tagged
    /// [`crate::ROOT_SHARE_TAG`], before the other shares): `root=` names it on the command line
    /// (`rootfstype=virtiofs`, `ro` if it is read-only) unless the command line names a root.
    pub root_share: Option<ShareConfig>,
    /// The vsock device's listening socket, bound beforehand at `vsock.socket` (the CLI binds it
    /// before entering a jail, as [`CharBackend::BoundSocket`], so that the jail's supervisor
    /// knows which socket to remove); `None`: bound when the device is made.
    pub vsock_socket: Option<SocketFile>,
    /// The control API's socket (docs/API.md), bound beforehand with [`crate::api::bind`]; the
    /// API is served while [`crate::Vm::run`] runs. `None`: no API.
    pub api_socket: Option<SocketFile>,
    /// Serve the boot timer (port 0x440, MMIO 0xc000_0000): the guest's first write of the magic
    /// byte is reported once as `boot-timer: <µs> µs since process start` (see
    /// [`devices::legacy::BootTimer`] and [`crate::process_start`]).
    pub boot_timer: bool,
    /// Which threads get a seccomp filter (see [`crate::seccomp`]): by default the vCPU threads;
    /// [`crate::SeccompMode::AllThreads`] also confines the thread that calls
    /// [`crate::Vm::run`], for good.
    pub seccomp: crate::SeccompMode,
    /// Where the interrupt controllers and the PIT are emulated (default: split when KVM can).
    pub irqchip: IrqChip,
    /// Describe the machine with ACPI tables (default): the guest finds its devices, powers off
    /// and hears the power button through them, and the command line carries no
    /// `virtio_mmio.device=` entries. Off (or `acpi=off` on the command line): the MP table and
    /// command-line devices only, for kernels without ACPI.
    pub acpi: bool,
    /// How long [`crate::ShutdownRequest::request`] waits, after pressing the power button, for the
    /// guest to power off before the VM is stopped ([`crate::ExitReason::Stopped`]); zero stops
    /// it at once.
    pub shutdown_timeout: std::time::Duration,
}

/// How long a guest has to power off after the power button, by default.
pub const DEFAULT_SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl VmConfig {
    /// A configuration with the defaults: 1 vCPU, 128 MiB, no disks, serial on stdout (no input),
    /// no virtio console.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            cmdline: None,
            vcpus: 1,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            disks: Vec::new(),
            nets: Vec::new(),
            serial: CharBackend::Stdout,
            console: CharBackend::Off,
            vsock: None,
            shares: Vec::new(),
            root_share: None,
            vsock_socket: None,
            api_socket: None,
            boot_timer: false,
            seccomp: crate::SeccompMode::default(),
            irqchip: IrqChip::default(),
            acpi: true,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }

    /// The command line the VMM starts from: [`VmConfig::cmdline`], or the default for where the
    /// console is ([`DEFAULT_CMDLINE`], [`DEFAULT_CONSOLE_CMDLINE`]).
    pub fn base_cmdline(&self) -> &str {
        crate::kernel::base_cmdline(self.cmdline.as_deref(), self.console.is_on())
    }

    /// Refuses the serial port and the virtio console on the same file or socket path (compared
    /// as written, after dropping `.` components and repeated slashes).
    pub fn check_backend_paths(&self) -> crate::Result<()> {
        if let (Some(a), Some(b)) = (self.serial.path(), self.console.path()) {
            if a.components().eq(b.components()) {
                return Err(crate::Error::SameBackendPath {
                    path: a.to_path_buf(),
                });
            }
        }
        if let Some(v) = &self.vsock {
            for p in [self.serial.path(), self.console.path()]
                .into_iter()
                .flatten()
            {
                if p.components().eq(v.socket.components()) {
                    return Err(crate::Error::SameBackendPath {
                        path: p.to_path_buf(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks what can be checked before anything is built: one reader of stdin, 1 to `max_vcpus`
    /// vCPUs, at least 1 MiB of memory and no more than `host_ram` bytes (0: unknown).
    pub(crate) fn check(&self, max_vcpus: usize, host_ram: u64) -> crate::Result<()> {
        if self.serial.owns_stdin() && self.console.owns_stdin() {
            return Err(crate::Error::StdinTwice);
        }
        self.check_backend_paths()?;
        if self.vcpus == 0 || usize::from(self.vcpus) > max_vcpus {
            return Err(crate::Error::VcpuCount {
                asked: self.vcpus,
                max: max_vcpus,
            });
        }
        crate::memory::check_size(self.memory_bytes, host_ram)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_name_values_not_options() {
        let ok = VmConfig::new("vmlinux");
        assert!(ok.check(1, 0).is_ok());

        let mut two_readers = VmConfig::new("vmlinux");
        two_readers.serial = CharBackend::Stdio;
        two_readers.console = CharBackend::Stdio;
        assert!(matches!(
            two_readers.check(8, 0),
            Err(crate::Error::StdinTwice)
        ));

        let mut many = VmConfig::new("vmlinux");
        many.vcpus = 255;
        let err = many.check(254, 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "255 vCPUs: this host runs 1 to 254 vCPUs per VM"
        );
        many.vcpus = 0;
        assert!(matches!(
            many.check(254, 0),
            Err(crate::Error::VcpuCount { asked: 0, max: 254 })
        ));

        let mut big = VmConfig::new("vmlinux");
        big.memory_bytes = 1 << 40;
        assert!(matches!(
            big.check(1, 1 << 30),
            Err(crate::Error::MemoryExceedsHost { .. })
        ));
        for err in [
            two_readers.check(8, 0),
            many.check(254, 0),
            big.check(1, 1 << 30),
        ] {
            assert!(!err.unwrap_err().to_string().contains("--"));
        }
    }

    #[test]
    fn irqchip_modes() {
        assert_eq!("auto".parse::<IrqChip>().unwrap(), IrqChip::Auto);
        assert_eq!("split".parse::<IrqChip>().unwrap(), IrqChip::Split);
        assert_eq!("kernel".parse::<IrqChip>().unwrap(), IrqChip::Kernel);
        let err = "userspace".parse::<IrqChip>().unwrap_err().to_string();
        assert!(
            err.contains("'userspace'") && err.contains("auto, split or kernel"),
            "{err}"
        );
    }

    #[test]
    fn console_backends() {
        let parse = |s: &str| s.parse::<CharBackend>().map(|b| format!("{b:?}"));
        assert_eq!(parse("off").unwrap(), "Off");
        assert_eq!(parse("stdio").unwrap(), "Stdio");
        assert_eq!(parse("pty").unwrap(), "Pty");
        assert_eq!(parse("file=/tmp/x").unwrap(), "File(/tmp/x)");
        assert_eq!(
            parse("file=/tmp/x,max=4K,truncate=on").unwrap(),
            "File(/tmp/x, max 4096, truncate)"
        );
        assert_eq!(parse("file=/tmp/x,max=10").unwrap(), "File(/tmp/x, max 10)");
        for bad in [
            "file=/x,max=0",
            "file=/x,max=1Q",
            "file=/x,truncate=maybe",
            "file=/x,y",
        ] {
            assert!(!parse(bad).unwrap_err().0.is_empty(), "{bad}");
        }
        assert_eq!(parse("socket=/run/c.sock").unwrap(), "Socket(/run/c.sock)");
        for bad in ["", "bogus", "file=", "socket=", "file", "stdio,x", "tcp=1"] {
            assert!(!parse(bad).unwrap_err().0.is_empty(), "{bad}");
        }
        assert!(CharBackend::Stdio.owns_stdin());
        assert!(!CharBackend::Stdout.owns_stdin());
        assert!(!CharBackend::Off.is_on());
    }

    #[test]
    fn vsock_options() {
        let v: VsockConfig = "cid=3,socket=/tmp/v.sock".parse().unwrap();
        assert_eq!((v.cid, v.socket), (3, PathBuf::from("/tmp/v.sock")));
        let v: VsockConfig = "socket=s,cid=4294967294".parse().unwrap();
        assert_eq!(v.cid, 4_294_967_294);
        for (bad, says) in [
            ("cid=2,socket=s", "3 to 4294967294"),
            ("cid=4294967295,socket=s", "3 to 4294967294"),
            ("cid=x,socket=s", "not a number"),
            ("cid=3", "needs both"),
            ("socket=s", "needs both"),
            ("cid=3,socket=", "empty"),
            ("cid=3,socket=s,port=1", "unknown vsock option 'port'"),
            ("cid", "not key=value"),
        ] {
            let e = bad.parse::<VsockConfig>().unwrap_err();
            assert!(e.0.contains(says), "{bad}: {}", e.0);
        }
        let mut c = VmConfig::new("vmlinux");
        c.console = "socket=/tmp/x.sock".parse().unwrap();
        c.vsock = Some("cid=3,socket=/tmp/./x.sock".parse().unwrap());
        assert!(matches!(
            c.check_backend_paths(),
            Err(crate::Error::SameBackendPath { .. })
        ));
    }

    #[test]
    fn serial_and_console_on_one_path_are_refused() {
        let mut c = VmConfig::new("vmlinux");
        c.serial = "socket=/tmp/x.sock".parse().unwrap();
        c.console = "socket=/tmp/./x.sock".parse().unwrap();
        let e = c.check(1, 0).unwrap_err();
        assert!(matches!(e, crate::Error::SameBackendPath { .. }), "{e}");
        assert!(e.to_string().contains("'/tmp/x.sock'"), "{e}");
        c.serial = "file=/tmp//x.sock,truncate=on".parse().unwrap();
        assert!(c.check(1, 0).is_err());
        c.serial = "file=/tmp/y".parse().unwrap();
        assert!(c.check(1, 0).is_ok());
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_size("128M"), Ok(128 << 20));
        assert_eq!(parse_memory_size("128"), Ok(128 << 20));
        assert_eq!(parse_memory_size("2G"), Ok(2 << 30));
        assert_eq!(parse_memory_size("2g"), Ok(2 << 30));
        assert_eq!(parse_memory_size("512K"), Ok(512 << 10));
        assert_eq!(parse_memory_size("100T"), Ok(100 << 40));
        assert!(parse_memory_size("0").is_err());
        assert!(parse_memory_size("0M").is_err());
        assert!(parse_memory_size("").is_err());
        assert!(parse_memory_size("M").is_err());
        assert!(parse_memory_size("12X").is_err());
        assert!(parse_memory_size("-1").is_err());
        assert!(parse_memory_size("99999999999999T").is_err());
    }

    #[test]
    fn net_options() {
        let n: NetConfig = "tap=tap0".parse().unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac, None);
        assert!(!n.create);
        assert_eq!(n.guest_mac(), devices::virtio::net::mac_from_name("tap0"));

        let n: NetConfig = "tap=vmtap1,mac=52:54:00:12:34:56,create=on"
            .parse()
            .unwrap();
        assert_eq!(n.tap, "vmtap1");
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!(n.guest_mac(), [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert!(n.create);

        let n: NetConfig = "mac=02-AA-bb-00-00-01,tap=t".parse().unwrap();
        assert_eq!(n.mac, Some([2, 0xaa, 0xbb, 0, 0, 1]));

        for (bad, names) in [
            ("", "net option"),
            ("tap0", "net option"),
            ("mac=52:54:00:12:34:56", "names no tap"),
            ("tap=", "tap"),
            ("tap=abcdefghijklmnop", "tap"),
            ("tap=a/b", "tap"),
            ("tap=t,mac=52:54:00:12:34", "mac"),
            ("tap=t,mac=52:54:00:12:34:56:78", "mac"),
            ("tap=t,mac=52:54:00:12:34:zz", "mac"),
            ("tap=t,mac=5:54:00:12:34:56", "mac"),
            ("tap=t,mac=01:00:5e:00:00:01", "multicast"),
            ("tap=t,create=maybe", "create"),
            ("tap=t,queues=2", "unknown net option 'queues'"),
        ] {
            let err = bad.parse::<NetConfig>().unwrap_err();
            assert!(err.0.contains(names), "{bad}: {}", err.0);
        }
    }

    #[test]
    fn disk_and_net_rate_limits() {
        let d: DiskConfig = "path=x.img,bw=50M,iops=1000".parse().unwrap();
        assert_eq!(d.path, PathBuf::from("x.img"));
        assert_eq!(d.rate_limit.bytes, Some(BucketConfig::new(50 << 20)));
        assert_eq!(d.rate_limit.ops, Some(BucketConfig::new(1000)));
        assert_eq!(d.rate_limit.bytes.unwrap().capacity(), 5 << 20);

        let d: DiskConfig = "x.img,iops=200,iops_burst=5,bw=8192,bw_burst=1M,readonly=on"
            .parse()
            .unwrap();
        assert!(d.read_only);
        let ops = d.rate_limit.ops.unwrap();
        assert_eq!((ops.rate, ops.burst), (200, Some(5)));
        let bytes = d.rate_limit.bytes.unwrap();
        assert_eq!((bytes.rate, bytes.burst), (8192, Some(1 << 20)));
        for (s, rate) in [("1k", 1 << 10), ("3G", 3 << 30), ("7", 7)] {
            let d: DiskConfig = format!("x.img,bw={s}").parse().unwrap();
            assert_eq!(d.rate_limit.bytes.unwrap().rate, rate, "{s}");
            assert_eq!(d.rate_limit.ops, None);
        }
        assert!("x.img"
            .parse::<DiskConfig>()
            .unwrap()
            .rate_limit
            .is_unlimited());

        let n: NetConfig = "tap=t0,bw=10M,pps=5000,pps_burst=50".parse().unwrap();
        assert_eq!(n.rate_limit.bytes, Some(BucketConfig::new(10 << 20)));
        assert_eq!(
            n.rate_limit.ops,
            Some(BucketConfig {
                rate: 5000,
                burst: Some(50)
            })
        );
        assert!("tap=t0"
            .parse::<NetConfig>()
            .unwrap()
            .rate_limit
            .is_unlimited());

        for (bad, says) in [
            (
                "x.img,bw=0",
                "bw=0: must be at least 1; leave bw out for no limit",
            ),
            ("x.img,bw=abc", "bw=abc is not a number"),
            ("x.img,bw=", "bw= is not a number"),
            ("x.img,bw=-5M", "is not a number"),
            ("x.img,bw=5X", "bw=5X has an unknown unit"),
            ("x.img,bw=5MB", "not a number"),
            ("x.img,bw=99999999999G", "too large"),
            ("x.img,iops=0", "iops=0: must be at least 1"),
            ("x.img,iops=1.5", "iops=1.5 is not a number"),
            ("x.img,iops=5K", "iops=5K is not a number"),
            ("x.img,bw_burst=1M", "bw_burst is set without bw"),
            ("x.img,iops_burst=3,bw=1M", "iops_burst is set without iops"),
            ("x.img,pps=10", "unknown disk option 'pps'"),
            ("tap=t,bw=0", "bw=0: must be at least 1"),
            ("tap=t,pps=abc", "pps=abc is not a number"),
            ("tap=t,pps_burst=2", "pps_burst is set without pps"),
            ("tap=t,iops=10", "unknown net option 'iops'"),
        ] {
            let err = if bad.starts_with("tap=") {
                bad.parse::<NetConfig>().unwrap_err()
            } else {
                bad.parse::<DiskConfig>().unwrap_err()
            };
            assert!(err.0.contains(says), "{bad}: {}", err.0);
        }
    }

    #[test]
    fn disk_options() {
        let d: DiskConfig = "root.img".parse().unwrap();
        assert_eq!(d.path, PathBuf::from("root.img"));
        assert!(!d.read_only);
        assert_eq!(d.id, None);

        let d: DiskConfig = "path=/a/b.img,readonly=on,id=data".parse().unwrap();
        assert_eq!(d.path, PathBuf::from("/a/b.img"));
        assert!(d.read_only);
        assert_eq!(d.id.as_deref(), Some("data"));

        let d: DiskConfig = "x.img,readonly=off".parse().unwrap();
        assert!(!d.read_only);
        assert!(!d.snapshot);

        let d: DiskConfig = "path=x.img,snapshot=on".parse().unwrap();
        assert!(d.snapshot && !d.read_only);
        let d: DiskConfig = "x.img,readonly=on,snapshot=on,snapshot=off"
            .parse()
            .unwrap();
        assert!(!d.snapshot && d.read_only);

        assert_eq!(d.aio, Aio::Auto);
        let d: DiskConfig = "x.img,aio=io_uring".parse().unwrap();
        assert_eq!(d.aio, Aio::IoUring);
        let d: DiskConfig = "x.img,aio=io_uring,aio=sync".parse().unwrap();
        assert_eq!(d.aio, Aio::Sync);
        let err = "x.img,aio=native".parse::<DiskConfig>().unwrap_err();
        assert!(err.0.contains("aio=sync or aio=io_uring"), "{}", err.0);
        use devices::virtio::block::DiskFormat;
        assert_eq!("x.qcow2".parse::<DiskConfig>().unwrap().format, None);
        let d: DiskConfig = "path=x.img,format=qcow2".parse().unwrap();
        assert_eq!(d.format, Some(DiskFormat::Qcow2));
        let d: DiskConfig = "x.qcow2,format=raw,snapshot=on".parse().unwrap();
        assert_eq!(d.format, Some(DiskFormat::Raw));
        assert!(d.snapshot);
        let err = "x.img,format=vmdk".parse::<DiskConfig>().unwrap_err();
        assert!(err.0.contains("'vmdk' is not raw or qcow2"), "{}", err.0);

        for bad in [
            "",
            ",readonly=on",
            "x.img,format=",
            "x.img,format=QCOW2",
            "x.img,readonly=maybe",
            "x.img,readonly",
            "x.img,snapshot=yes please",
            "x.img,snapshot",
            "x.img,cache=none",
            "x.img,id=",
            "x.img,id=abcdefghijklmnopqrstuvwxyz",
        ] {
            let err = bad.parse::<DiskConfig>().unwrap_err();
            assert!(!err.0.is_empty(), "{bad}");
        }
    }
}

//! What a VM is made of: the configuration an embedder (or the CLI) hands to [`crate::Vm::new`].

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;

/// Guest memory when none is asked for: 128 MiB.
pub const DEFAULT_MEMORY_BYTES: u64 = 128 << 20;

/// The kernel command line used when the caller gives none.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";

/// Where the guest's serial port (COM1) output goes.
pub enum SerialOutput {
    /// The VMM process's standard output.
    Stdout,
    /// Any writer, e.g. a file or a pipe a test reads.
    Writer(Box<dyn Write + Send>),
    /// Discarded.
    Sink,
}

impl fmt::Debug for SerialOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SerialOutput::Stdout => "Stdout",
            SerialOutput::Writer(_) => "Writer(..)",
            SerialOutput::Sink => "Sink",
        })
    }
}

/// One virtio-blk disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// The raw image file backing the disk.
    pub path: PathBuf,
    /// Expose the disk read-only (VIRTIO_BLK_F_RO) and open the file read-only.
    pub read_only: bool,
    /// The serial the guest reads with VIRTIO_BLK_T_GET_ID (at most 20 bytes).
    pub id: Option<String>,
}

/// An option value that could not be parsed; the message names the value and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl FromStr for DiskConfig {
    type Err = ParseError;

    /// Parses `PATH[,readonly=on|off][,id=NAME]`, or the same with `path=PATH` as the first item.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let first = parts.next().unwrap_or_default();
        let path = first.strip_prefix("path=").unwrap_or(first);
        if path.is_empty() {
            return Err(ParseError(format!(
                "disk '{s}' has no image path; use --disk PATH[,readonly=on][,id=NAME]"
            )));
        }
        let mut disk = DiskConfig {
            path: PathBuf::from(path),
            read_only: false,
            id: None,
        };
        for part in parts {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                ParseError(format!(
                    "disk option '{part}' is not key=value; use --disk PATH[,readonly=on][,id=NAME]"
                ))
            })?;
            match key {
                "readonly" | "ro" => disk.read_only = parse_switch(key, value)?,
                "id" => {
                    if value.is_empty() || value.len() > 20 || !value.is_ascii() {
                        return Err(ParseError(format!(
                            "disk id '{value}' must be 1 to 20 ASCII characters"
                        )));
                    }
                    disk.id = Some(value.to_string());
                }
                _ => {
                    return Err(ParseError(format!(
                        "unknown disk option '{key}'; known options: readonly=on|off, id=NAME"
                    )))
                }
            }
        }
        Ok(disk)
    }
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

/// Everything needed to build and boot one VM.
#[derive(Debug)]
pub struct VmConfig {
    /// ELF vmlinux (PVH entry if it has the note, 64-bit boot protocol otherwise) or bzImage.
    pub kernel: PathBuf,
    /// Optional initial ramdisk, loaded at the top of low memory.
    pub initrd: Option<PathBuf>,
    /// Replaces [`DEFAULT_CMDLINE`]; the VMM still appends what it must (root device, virtio-mmio devices, host quirks).
    pub cmdline: Option<String>,
    /// Number of vCPUs (1 to the KVM limit).
    pub vcpus: u8,
    /// Guest RAM in bytes.
    pub memory_bytes: u64,
    /// virtio-blk disks, in order: /dev/vda, /dev/vdb, …
    pub disks: Vec<DiskConfig>,
    /// Where COM1 output goes.
    pub serial_output: SerialOutput,
    /// Feed the VMM's standard input into COM1.
    pub serial_input: bool,
}

impl VmConfig {
    /// A configuration with the defaults: 1 vCPU, 128 MiB, no disks, serial on stdout, no input.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            cmdline: None,
            vcpus: 1,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            disks: Vec::new(),
            serial_output: SerialOutput::Stdout,
            serial_input: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

        for bad in [
            "",
            ",readonly=on",
            "x.img,readonly=maybe",
            "x.img,readonly",
            "x.img,cache=none",
            "x.img,id=",
            "x.img,id=abcdefghijklmnopqrstuvwxyz",
        ] {
            let err = bad.parse::<DiskConfig>().unwrap_err();
            assert!(!err.0.is_empty(), "{bad}");
        }
    }
}

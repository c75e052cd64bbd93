//! The `fs` group: a shared host directory (virtio-fs) from inside the Linux guest, beside QEMU
//! with virtiofsd on the same directory, and beside the same guest's virtio-blk disk.
//!
//! The guest's root is the share itself: the test root file system unpacked into a scratch
//! directory (from its initramfs.cpio), with a script at /fs-bench.sh as init (vmm:
//! `--root-share DIR,readonly=off` and `vmm.init=`; QEMU: `root=bench rootfstype=virtiofs` and
//! `init=`, virtiofsd with `cache=auto`, the guest's memory a shared memfd as vhost-user needs,
//! virtio-mmio in virtio 1 mode as libvhost-user needs).
//! The script times, with the guest's /proc/uptime, on / (the share) and then on an ext4 copy of
//! the test image at /dev/vda: a sequential write (`dd bs=1M conv=fsync`), a sequential read
//! after dropping the caches, N empty files created, and N `stat`s after dropping the caches.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::report::{Figure, Samples, Target};
use crate::run::{Engine, Guest, QEMU_HOST_PARAMS};
use crate::{Bench, LINUX_TIMEOUT};

/// The init script: CHECK lines per measurement, then VMM-TEST-DONE and a power-off.
const SCRIPT: &str = r#"#!/bin/sh
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sys /sys 2>/dev/null
mount -t devtmpfs dev /dev 2>/dev/null
up() { cut -d' ' -f1 /proc/uptime; }
rate() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { d = b - a; if (d < 0.01) d = 0.01; printf "%.2f", n / d }'; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || echo "CHECK nodrop=1"; }
bench() {
    d=$2/fs-bench.$$
    mkdir -p $d
    drop; a=$(up); dd if=/dev/zero of=$d/seq bs=1M count=$MIB conv=fsync 2>/dev/null; b=$(up)
    echo "CHECK ${1}_write=$(rate $MIB $a $b)"
    drop; a=$(up); dd if=$d/seq of=/dev/null bs=1M 2>/dev/null; b=$(up)
    echo "CHECK ${1}_read=$(rate $MIB $a $b)"
    a=$(up); i=0; while [ $i -lt $FILES ]; do : > $d/f$i; i=$((i+1)); done; b=$(up)
    echo "CHECK ${1}_create=$(rate $FILES $a $b)"
    drop; a=$(up); i=0; while [ $i -lt $FILES ]; do [ -e $d/f$i ]; i=$((i+1)); done; b=$(up)
    echo "CHECK ${1}_stat=$(rate $FILES $a $b)"
    rm -rf $d
}
MIB=$(sed -n 's/.*fsbenchmib=\([0-9]*\).*/\1/p' /proc/cmdline)
FILES=$(sed -n 's/.*fsbenchfiles=\([0-9]*\).*/\1/p' /proc/cmdline)
bench fs /
mkdir -p /blk && mount /dev/vda /blk && bench blk /blk
echo VMM-TEST-DONE
echo o > /proc/sysrq-trigger
sleep 30
"#;

/// The figures: key, title, unit.
const FIGURES: [(&str, &str, &str); 4] = [
    ("write", "sequential write (dd 1M, fsync)", "MiB/s"),
    ("read", "sequential read (dd 1M, cold cache)", "MiB/s"),
    ("create", "empty files created", "files/s"),
    ("stat", "stat of those files (cold cache)", "stats/s"),
];

/// A virtiofsd, killed on drop.
struct Virtiofsd(Child);

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// QEMU's virtiofsd: Debian's qemu-system-common has it in /usr/lib/qemu (QEMU 7.2).
fn find_virtiofsd() -> Option<PathBuf> {
    ["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Starts virtiofsd on `dir` with its socket at `socket`, and waits for the socket.
fn start_virtiofsd(bin: &Path, dir: &Path, socket: &Path) -> Result<Virtiofsd, String> {
    let _ = std::fs::remove_file(socket);
    let child = Command::new(bin)
        .arg(format!("--socket-path={}", socket.display()))
        .args(["-o", &format!("source={}", dir.display())])
        .args(["-o", "cache=auto", "-f"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let d = Virtiofsd(child);
    let start = Instant::now();
    while !socket.exists() {
        if start.elapsed() > Duration::from_secs(10) {
            return Err("virtiofsd made no socket within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(d)
}

impl Bench {
    /// See the module documentation.
    pub(crate) fn fs_group(&mut self, kernel: &Path, rootfs: &Path, runs: usize) {
        let (mib, files) = if self.quick { (4, 100) } else { (16, 400) };
        let cpio = rootfs.with_file_name("initramfs.cpio");
        let root = self.scratch.join("fs-root");
        let _ = std::fs::remove_dir_all(&root);
        let unpacked = std::fs::create_dir_all(&root)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                let input = std::fs::File::open(&cpio)
                    .map_err(|e| format!("cannot open {}: {e}", cpio.display()))?;
                let status = Command::new("cpio")
                    .args(["-idm", "--quiet"])
                    .current_dir(&root)
                    .stdin(input)
                    .status()
                    .map_err(|e| format!("cannot run cpio (apt-get install cpio): {e}"))?;
                if !status.success() {
                    return Err(format!("cpio -idm < {} failed", cpio.display()));
                }
                let script = root.join("fs-bench.sh");
                std::fs::write(&script, SCRIPT).map_err(|e| e.to_string())?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = unpacked {
            self.failures.push(format!("fs: {e}"));
            return;
        }
        let virtiofsd = find_virtiofsd();
        let mut figures: Vec<(Figure, Figure)> = FIGURES
            .iter()
            .map(|(key, title, unit)| {
                let mut fs = Figure::new(&format!("fs_{key}"), &format!("share: {title}"), unit);
                fs.targets = vec![Target::RatioAtLeast(1.0)];
                let mut blk = Figure::new(
                    &format!("fs_blk_{key}"),
                    &format!("virtio-blk ext4: {title}"),
                    unit,
                );
                if self.qemu.is_some() && virtiofsd.is_some() {
                    fs.qemu = Some(Samples::default());
                    blk.qemu = Some(Samples::default());
                }
                (fs, blk)
            })
            .collect();
        let params = format!("fsbenchmib={mib} fsbenchfiles={files}");
        for i in 0..runs {
            for engine in self.engines() {
                if matches!(engine, Engine::Qemu(_)) && virtiofsd.is_none() {
                    continue;
                }
                eprintln!(
                    "vmm-bench: fs in a Linux guest under {}, run {}/{runs}",
                    engine.name(),
                    i + 1
                );
                let disk = self.scratch.join("fs-blk.ext4");
                if let Err(e) = std::fs::copy(rootfs, &disk) {
                    self.failures
                        .push(format!("fs: cannot copy the rootfs: {e}"));
                    return;
                }
                let base = "console=ttyS0 reboot=k panic=1 pci=off";
                let mut guest = Guest {
                    kernel: kernel.to_path_buf(),
                    disk: Some(disk.clone()),
                    memory_mib: 256,
                    ..Guest::default()
                };
                let socket = self.scratch.join("virtiofsd.sock");
                let _daemon = match &engine {
                    Engine::Vmm(_) => {
                        guest.cmdline = Some(format!("{base} {params} vmm.init=/fs-bench.sh"));
                        guest.vmm_args = vec![
                            "--root-share".into(),
                            format!("{},readonly=off", root.display()),
                        ];
                        None
                    }
                    Engine::Qemu(_) => {
                        let Some(bin) = &virtiofsd else { continue };
                        let daemon = match start_virtiofsd(bin, &root, &socket) {
                            Ok(d) => d,
                            Err(e) => {
                                self.failures.push(format!("fs: {e}"));
                                continue;
                            }
                        };
                        guest.cmdline = Some(format!(
                            "{base} {QEMU_HOST_PARAMS} {params} root=bench rootfstype=virtiofs rw init=/fs-bench.sh"
                        ));
                        guest.qemu_args = [
                            "-object",
                            "memory-backend-memfd,id=mem,size=256M,share=on",
                            "-machine",
                            "memory-backend=mem",
                            // libvhost-user serves virtio 1 only; microvm's virtio-mmio is
                            // legacy unless told.
                            "-global",
                            "virtio-mmio.force-legacy=false",
                            "-chardev",
                            &format!("socket,id=fs0,path={}", socket.display()),
                            "-device",
                            "vhost-user-fs-device,chardev=fs0,tag=bench",
                        ]
                        .map(String::from)
                        .to_vec();
                        Some(daemon)
                    }
                };
                let stop = matches!(engine, Engine::Qemu(_)).then_some("VMM-TEST-DONE");
                let o = self.once(&engine, &guest, LINUX_TIMEOUT, &["VMM-TEST-DONE"], stop);
                let _ = std::fs::remove_file(&disk);
                let Some(o) = o else { continue };
                if o.mark("VMM-TEST-DONE").is_none() {
                    self.failures.push(format!(
                        "fs: {}: the guest ended before VMM-TEST-DONE",
                        engine.name()
                    ));
                    continue;
                }
                if o.check("nodrop").is_some() {
                    self.failures.push(format!(
                        "fs: {}: the guest could not drop its caches (a kernel without \
                         CONFIG_PROC_SYSCTL?): its cold figures would be warm",
                        engine.name()
                    ));
                    continue;
                }
                for ((fs, blk), (key, _, _)) in figures.iter_mut().zip(FIGURES) {
                    for (figure, prefix) in [(fs, "fs"), (blk, "blk")] {
                        let Some(v) = o.check(&format!("{prefix}_{key}")) else {
                            continue;
                        };
                        match engine {
                            Engine::Vmm(_) => figure.vmm.push(v),
                            Engine::Qemu(_) => {
                                figure.qemu.get_or_insert_with(Samples::default).push(v)
                            }
                        }
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&root);
        for (mut fs, mut blk) in figures {
            let share_of_blk = match (fs.vmm.median(), blk.vmm.median()) {
                (Some(f), Some(b)) if b > 0.0 => {
                    format!("; vmm's share is {:.0}% of its virtio-blk", 100.0 * f / b)
                }
                _ => String::new(),
            };
            fs.note = format!(
                "{mib} MiB, {files} files, guest's /proc/uptime{share_of_blk}; QEMU: virtiofsd cache=auto"
            );
            blk.note = format!("the same guest's /dev/vda (ext4), {mib} MiB, {files} files");
            self.figures.push(fs);
            self.figures.push(blk);
        }
    }
}

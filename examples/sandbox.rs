//! The embedded-sandbox use of vmm: boot one guest with the agent, run several commands in it,
//! move a file in and out, then power it off.
//!
//! ```text
//! cargo run --release --example sandbox -- KERNEL ROOTFS
//! ```
//!
//! KERNEL is a vmlinux or bzImage with virtio-mmio and virtio-vsock built in; ROOTFS a root file
//! system image (copied first: the guest writes to it). The test kernel and root file system of
//! resources/ do: `resources/build-kernel.sh` and `resources/build-rootfs.sh` print their paths.

use std::time::Duration;

use sandbox::{Exec, Sandbox};
use vm::{CharBackend, DiskConfig, VmConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(kernel), Some(rootfs)) = (args.next(), args.next()) else {
        eprintln!("usage: sandbox KERNEL ROOTFS");
        std::process::exit(2);
    };
    let copy = std::env::temp_dir().join(format!("sandbox-example-{}.img", std::process::id()));
    std::fs::copy(&rootfs, &copy)?;

    let mut config = VmConfig::new(kernel);
    config.memory_bytes = 256 << 20;
    config.serial = CharBackend::Off;
    config.disks.push(DiskConfig {
        path: copy.clone(),
        ..DiskConfig::default()
    });
    let sandbox = Sandbox::start(config, Duration::from_secs(300))?;
    println!("agent ready: {}", sandbox.hello().name);

    let agent = sandbox.agent();
    let sh = |script: &str| Exec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        ..Exec::default()
    };
    for script in [
        "uname -r",
        "echo out; echo err >&2; exit 7",
        "no-such-command",
        "kill -9 $$",
    ] {
        match agent.output(
            &sh(script),
            Vec::new(),
            1 << 20,
            Some(Duration::from_secs(60)),
        ) {
            Ok(out) => println!(
                "{script:?}: status {} stdout {:?} stderr {:?}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => println!("{script:?}: error: {e}"),
        }
    }
    let out = agent.output(
        &sh("tr a-z A-Z"),
        b"stdin reaches the guest\n".to_vec(),
        1 << 20,
        None,
    )?;
    println!("stdin: {:?}", String::from_utf8_lossy(&out.stdout));

    agent.write_file("/tmp/from-host.txt", b"hello from the host\n", 0o644)?;
    let back = agent.read_file("/tmp/from-host.txt", 1 << 20)?;
    println!("file round trip: {:?}", String::from_utf8_lossy(&back));

    let reason = sandbox.stop(Duration::from_secs(30))?;
    println!("guest stopped: {reason:?}");
    std::fs::remove_file(&copy)?;
    Ok(())
}

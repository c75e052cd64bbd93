//! Boots a kernel with an optional disk and prints why the guest stopped.
//!
//! `cargo run -p vm --example boot -- KERNEL [DISK]`

use vm::{DiskConfig, ExitReason, Vm, VmConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let kernel = args.next().ok_or("usage: boot KERNEL [DISK]")?;
    let mut config = VmConfig::new(kernel);
    if let Some(disk) = args.next() {
        config.disks.push(disk.parse::<DiskConfig>()?);
    }
    let reason: ExitReason = Vm::new(config)?.run()?;
    eprintln!("guest stopped: {reason:?}");
    Ok(())
}

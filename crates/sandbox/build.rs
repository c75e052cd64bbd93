//! Builds the guest agent (crates/agent, binary `vmm-agent`) as a static executable for
//! x86_64-unknown-linux-gnu and leaves it in OUT_DIR, where the library includes it: vmm brings
//! its agent along, and nothing has to be installed in the guest.
//!
//! A second cargo builds it, with `-C target-feature=+crt-static` (glibc's static build; this
//! toolchain has no musl target). `--target` keeps that flag off build scripts and proc macros,
//! and a target directory of its own (`<target>/agent`) keeps the two cargos out of each other's
//! locks.

use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let agent_dir = manifest_dir.join("../agent");
    for p in ["src", "Cargo.toml", "PROTOCOL.md"] {
        println!("cargo:rerun-if-changed={}", agent_dir.join(p).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../../Cargo.lock").display()
    );
    let target_dir = target_dir(&out_dir).join("agent");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--bin",
            "vmm-agent",
            "--target",
            GUEST_TARGET,
        ])
        .arg("--manifest-path")
        .arg(agent_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Ctarget-feature=+crt-static\x1f-Cstrip=symbols",
        )
        // What the outer cargo (or clippy) set for its own build must not reach this one.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        .env_remove("CARGO_PRIMARY_PACKAGE")
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the guest agent: {e}"));
    assert!(
        status.success(),
        "building the guest agent (crates/agent) failed: {status}"
    );
    let built = target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join("vmm-agent");
    std::fs::copy(&built, out_dir.join("vmm-agent"))
        .unwrap_or_else(|e| panic!("cannot copy {}: {e}", built.display()));
}

/// The workspace's target directory: CARGO_TARGET_DIR, or the ancestor of OUT_DIR that cargo
/// marked with CACHEDIR.TAG.
fn target_dir(out_dir: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    out_dir
        .ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .map_or_else(|| out_dir.to_path_buf(), Path::to_path_buf)
}

//! CI smoke of the fuzz targets in fuzz/: `resources/fuzz.sh --smoke` builds every target with
//! the address sanitizer (on the stable toolchain, through RUSTC_BOOTSTRAP), replays the inputs
//! kept under fuzz/regressions/, then runs each target for a few seconds from its seeds. Any
//! crash fails the test with the script's table and the artifact path. cargo-fuzz is installed
//! by the script when missing; set VMM_SKIP_FUZZ=1 to skip this test explicitly.

use std::path::Path;
use std::process::Command;

#[test]
fn fuzz_targets_smoke() {
    if std::env::var("VMM_SKIP_FUZZ").as_deref() == Ok("1") {
        eprintln!("fuzz smoke skipped: VMM_SKIP_FUZZ=1");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seconds = std::env::var("VMM_FUZZ_SMOKE_SECONDS").unwrap_or_else(|_| "3".into());
    let out = Command::new(root.join("resources/fuzz.sh"))
        .arg("--smoke")
        .arg(&seconds)
        .current_dir(root)
        .output()
        .expect("cannot run resources/fuzz.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    match out.status.code() {
        Some(0) => {}
        Some(2) => panic!(
            "resources/fuzz.sh could not set up (is cargo-fuzz installable? \
             'cargo install cargo-fuzz --locked'; or set VMM_SKIP_FUZZ=1 to skip):\n{stderr}"
        ),
        other => panic!("a fuzz target crashed (exit {other:?}); see the table above:\n{stderr}"),
    }
    // Every target reported a number of executions.
    let rows: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("target "))
        .skip(1)
        .collect();
    assert!(rows.len() >= 10, "expected a row per target:\n{stdout}");
    for row in rows {
        let execs = row.split_whitespace().nth(1).unwrap_or("?");
        assert!(
            execs.parse::<u64>().is_ok_and(|n| n > 0),
            "a target did not run: {row}"
        );
    }
}

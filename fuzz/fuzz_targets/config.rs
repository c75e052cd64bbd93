//! Option and command-line parsing: `--disk`, `--net`, `--console`/`--serial` and `--memory`
//! values (the `FromStr` impls and `parse_memory_size` the CLI and embedders use) and the
//! kernel command-line builder. Checks: no panic; what a parser accepts respects its own rules
//! (non-empty paths, ids of at most 20 bytes, tap names of 1 to 15 bytes, unicast MACs,
//! non-zero memory); an accepted command line fits its capacity and holds every addition.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vm::{parse_memory_size, CharBackend, DiskConfig, NetConfig};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    match sel % 5 {
        0 => {
            if let Ok(d) = s.parse::<DiskConfig>() {
                assert!(!d.path.as_os_str().is_empty());
                assert!(d
                    .id
                    .as_ref()
                    .is_none_or(|id| !id.is_empty() && id.len() <= 20));
            }
        }
        1 => {
            if let Ok(n) = s.parse::<NetConfig>() {
                assert!(!n.tap.is_empty() && n.tap.len() <= devices::virtio::net::MAX_NAME_LEN);
                assert!(!n.tap.contains('/'));
                assert_eq!(n.guest_mac()[0] & 1, 0, "multicast guest MAC");
            }
        }
        2 => {
            if let Ok(CharBackend::File(p, _) | CharBackend::Socket(p)) = s.parse::<CharBackend>() {
                assert!(!p.as_os_str().is_empty());
            }
        }
        3 => {
            if let Ok(n) = parse_memory_size(s) {
                assert!(n > 0);
                if n % 1024 == 0 {
                    assert_eq!(parse_memory_size(&format!("{}K", n >> 10)).ok(), Some(n));
                }
            }
        }
        _ => {
            let mut parts = s.split('\n');
            let base = parts.next().unwrap_or_default();
            let additions: Vec<String> = parts.map(str::to_string).collect();
            let capacity = usize::from(sel) * 8;
            if let Ok(line) = vm::fuzzing::build_cmdline(base, &additions, capacity) {
                assert!(
                    line.len() < capacity,
                    "{} bytes in a capacity of {capacity}",
                    line.len()
                );
                for a in &additions {
                    assert!(line.contains(a.trim()));
                }
                for w in line.split_whitespace() {
                    let key = w.split_once('=').map_or(w, |(k, _)| k);
                    assert!(vm::fuzzing::cmdline_has(&line, key));
                }
            }
        }
    }
});

#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ one after the other and reports, per target, the executions,
# the executions per second and the crashes.
#
#   resources/fuzz.sh [--smoke] [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 60 (5 with --smoke); no TARGET means all of them. --smoke also
# starts each target from its committed seeds only (fuzz/seeds/TARGET) and keeps no corpus.
# Works on a stable toolchain (RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass -Zsanitizer=address);
# installs cargo-fuzz with `cargo install --locked` when it is missing. Each target runs alone
# (-jobs=1). Every input in fuzz/regressions/TARGET is run first, as a regression check.
# VMM_FUZZ_SANITIZER=none runs without AddressSanitizer (several times more executions per second;
# the targets are safe Rust over crates with little unsafe code), default address.
# Exit status: 0 when no target crashed; 1 when one did (the artifact path is printed and kept
# under fuzz/artifacts/TARGET); 2 on a usage or setup error.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

smoke=0
seconds=""
targets=()
for arg in "$@"; do
    case "$arg" in
    --smoke) smoke=1 ;;
    -h | --help)
        sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    -*)
        echo "fuzz.sh: unknown option '$arg'" >&2
        exit 2
        ;;
    *)
        if [[ -z "$seconds" && "$arg" =~ ^[0-9]+$ ]]; then
            seconds=$arg
        else
            targets+=("$arg")
        fi
        ;;
    esac
done
if [[ -z "$seconds" ]]; then
    if ((smoke)); then seconds=5; else seconds=60; fi
fi

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --help >/dev/null 2>&1; then
    echo "== installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    if ! cargo install cargo-fuzz --locked; then
        echo "fuzz.sh: cannot install cargo-fuzz; install it with 'cargo install cargo-fuzz --locked'" >&2
        exit 2
    fi
fi

all=$(cargo fuzz list)
if ((${#targets[@]} == 0)); then
    # shellcheck disable=SC2206
    targets=($all)
fi
for t in "${targets[@]}"; do
    if ! grep -qx "$t" <<<"$all"; then
        echo "fuzz.sh: no fuzz target '$t'; targets: $(echo $all)" >&2
        exit 2
    fi
done

sanitizer=${VMM_FUZZ_SANITIZER:-address}
echo "== building ${#targets[@]} fuzz targets (sanitizer: $sanitizer)"
start=$(date +%s)
if ! cargo fuzz build -s "$sanitizer" >"${TMPDIR:-/tmp}/fuzz-build.$$.log" 2>&1; then
    tail -30 "${TMPDIR:-/tmp}/fuzz-build.$$.log" >&2
    echo "fuzz.sh: building the fuzz targets failed; run 'RUSTC_BOOTSTRAP=1 cargo fuzz build' in fuzz/" >&2
    exit 2
fi
rm -f "${TMPDIR:-/tmp}/fuzz-build.$$.log"
echo "   built in $(($(date +%s) - start)) s"

logdir=$(mktemp -d)
trap 'rm -rf "$logdir"' EXIT
failed=0
printf '%-16s %12s %10s %8s  %s\n' target executions exec/s crashes note
for t in "${targets[@]}"; do
    log="$logdir/$t.log"
    note=""
    # Regression inputs first: each must run clean.
    if compgen -G "regressions/$t/*" >/dev/null; then
        if ! cargo fuzz run -s "$sanitizer" "$t" regressions/"$t"/* -- -runs=1 >"$log.reg" 2>&1; then
            failed=1
            note="REGRESSION: $(grep -m1 -E 'panicked|ERROR' "$log.reg" || echo 'see log')"
        fi
    fi
    mkdir -p "artifacts/$t"
    corpus=()
    if ((smoke)); then
        corpus=("$logdir/corpus-$t")
        mkdir -p "${corpus[0]}"
    else
        mkdir -p "corpus/$t"
        corpus=("corpus/$t")
    fi
    [[ -d "seeds/$t" ]] && corpus+=("seeds/$t")
    rc=0
    cargo fuzz run -s "$sanitizer" "$t" "${corpus[@]}" -- -max_total_time="$seconds" -jobs=1 -workers=1 \
        -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    crashes=0
    if ((rc != 0)); then
        crashes=1
        failed=1
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
        why=$(grep -m1 -E 'panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer' "$log" || true)
        note="CRASH ${artifact:-(no artifact, see below)} ${why}"
        echo "---- $t: last lines of the log"
        tail -30 "$log"
    fi
    printf '%-16s %12s %10s %8s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$crashes" "$note"
done
exit "$failed"

#!/usr/bin/env bash
# Where a VMM's CPU time goes, thread by thread: watches every process named vmm or
# qemu-system-x86 (or the names given) and, when one ends, prints the user and system CPU
# seconds of each of its threads as last sampled (every 0.2 s). Run it beside the benchmark:
#   resources/thread-cpu.sh & target/release/vmm-bench --only blk --linux-runs 1; kill %1
# On a kvm_pvm host the guest's own execution shows as the vCPU thread's system time; the
# VMM's own work is everything else (user time of the vCPU threads: exits served in user space;
# the event-loop and helper threads). Shell built-ins only, so watching costs little CPU.
set -euo pipefail
names=("${@:-vmm}")
[ $# -eq 0 ] && names+=(qemu-system-x86)
tick=$(getconf CLK_TCK)
declare -A last started

seconds() { # VAR TICKS: VAR="S.ss"
    printf -v "$1" '%d.%02d' $(($2 / tick)) $(($2 * 100 / tick % 100))
}

report() { # pid
    printf '%s (pid %s), %s s:\n%s\n' "${started[$1]%% *}" "$1" \
        "$((SECONDS - ${started[$1]##* }))" "${last[$1]:-  (no sample)}"
    unset "last[$1]" "started[$1]"
}

while :; do
    for comm_file in /proc/[0-9]*/comm; do
        pid=${comm_file#/proc/}
        pid=${pid%/comm}
        read -r comm < "$comm_file" 2>/dev/null || continue
        [[ " ${names[*]} " == *" $comm "* ]] || continue
        [ -n "${started[$pid]:-}" ] || started[$pid]="$comm $SECONDS"
        lines=""
        for stat in /proc/"$pid"/task/*/stat; do
            read -r s < "$stat" 2>/dev/null || continue
            name=${s#*(}
            name=${name%)*}
            read -ra f <<< "${s##*) }"
            seconds user "${f[11]}"
            seconds system "${f[12]}"
            printf -v line '  %-16s user %8s s  system %8s s' "$name" "$user" "$system"
            lines+=$line$'\n'
        done
        [ -n "$lines" ] && last[$pid]=${lines%$'\n'}
    done
    for pid in "${!started[@]}"; do
        [ -d /proc/"$pid" ] || report "$pid"
    done
    sleep 0.2
done

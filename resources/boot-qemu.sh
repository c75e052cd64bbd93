#!/usr/bin/env bash
# Boot the test guest under QEMU (-M microvm, KVM) as a reference for our VMM:
#   boot-qemu.sh pvh      ELF vmlinux (PVH entry) with rootfs.ext4 as /dev/vda
#   boot-qemu.sh bzimage  bzImage with initramfs.cpio.gz
#   boot-qemu.sh bzimage-plain  bzImage with the uncompressed initramfs.cpio
#   boot-qemu.sh disks    as pvh, plus /dev/vdb (1 MiB, pre-filled with
#                         "HOSTPREFILL-0123") and a read-only /dev/vdc; checks
#                         afterwards on the host that the guest's writes landed
# Extra arguments are appended to the kernel command line (the default runs
# vmmtest=full). The guest's console is copied to stderr and to a log file; at
# VMM-TEST-DONE (or when QEMU ends, or after ${VMM_QEMU_TIMEOUT:-300} s) the
# script stops QEMU and prints the CHECK lines and the time from QEMU start to
# VMM-INIT-OK on stdout. Exit status 0 if VMM-TEST-DONE was seen.
set -euo pipefail

here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
mode=${1:-pvh}
shift || true
timeout_s=${VMM_QEMU_TIMEOUT:-300}

# Parameters this host (KVM-PVM, CPUID not virtualized) needs; see DESIGN.md, "Host quirks".
host_params="noxsave clearcpuid=151,158,306,288,308,145,298,534,515,514"
token=qemu$$
params="console=ttyS0 reboot=k panic=1 $host_params vmmtest=full vmmtoken=$token"

mapfile -t kernel < <("$here/build-kernel.sh")
mapfile -t rootfs < <("$here/build-rootfs.sh")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# ${VMM_QEMU_MACHINE} overrides the machine options (e.g. to turn option ROMs on).
machine=${VMM_QEMU_MACHINE:-microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off}
# -arch-capabilities: QEMU 7.2 on AMD hosts aborts writing MSR 0x10a, which KVM refuses there.
args=(-M "$machine" -enable-kvm -cpu host,-arch-capabilities
    -m 256 -smp "${VMM_QEMU_CPUS:-1}" -nodefaults -no-user-config -nographic -no-reboot
    -serial "file:$work/console.log" -display none)
case $mode in
pvh | disks)
    cp "${rootfs[0]}" "$work/rootfs.ext4"
    args+=(-kernel "${kernel[0]}"
        -drive "id=d0,file=$work/rootfs.ext4,format=raw,if=none"
        -device virtio-blk-device,drive=d0)
    params+=" root=/dev/vda rw"
    if [[ $mode == disks ]]; then
        truncate -s 1M "$work/vdb.img" "$work/vdc.img"
        printf 'HOSTPREFILL-0123' | dd of="$work/vdb.img" conv=notrunc status=none
        args+=(-drive "id=d1,file=$work/vdb.img,format=raw,if=none"
            -device virtio-blk-device,drive=d1
            -drive "id=d2,file=$work/vdc.img,format=raw,if=none,readonly=on"
            -device virtio-blk-device,drive=d2)
    fi
    ;;
bzimage)
    args+=(-kernel "${kernel[1]}" -initrd "${rootfs[1]}")
    ;;
bzimage-plain)
    args+=(-kernel "${kernel[1]}" -initrd "$(dirname "${rootfs[1]}")/initramfs.cpio")
    ;;
*)
    echo "usage: $0 pvh|bzimage|bzimage-plain|disks [kernel parameters...]" >&2
    exit 2
    ;;
esac
params+=" $*"

: >"$work/console.log"
start=$(date +%s.%N)
qemu-system-x86_64 "${args[@]}" -append "$params" &
qemu=$!
tail -f "$work/console.log" >&2 &
tailer=$!

init_at=""
done_ok=1
while kill -0 "$qemu" 2>/dev/null; do
    if [[ -z $init_at ]] && grep -q VMM-INIT-OK "$work/console.log"; then
        init_at=$(date +%s.%N)
    fi
    if grep -q VMM-TEST-DONE "$work/console.log"; then
        done_ok=0
        sleep 1
        break
    fi
    if (($(printf '%.0f' "$(echo "$(date +%s.%N) - $start" | bc)") > timeout_s)); then
        echo "boot-qemu: timeout after $timeout_s s" >&2
        break
    fi
    sleep 0.2
done
kill "$qemu" 2>/dev/null || true
wait "$qemu" 2>/dev/null || true
kill "$tailer" 2>/dev/null || true
if [[ -z $init_at ]] && grep -q VMM-INIT-OK "$work/console.log"; then init_at=$(date +%s.%N); fi

grep -a '^CHECK ' "$work/console.log" | tr -d '\r' || true
if [[ -n $init_at ]]; then
    printf 'TIME qemu_start_to_init_s=%.1f\n' "$(echo "$init_at - $start" | bc)"
fi
# The kernel's own clock when it ran init (CONFIG_PRINTK_TIME).
grep -a 'Run /.*init as init process' "$work/console.log" | tr -d '\r' |
    sed -E 's/^\[ *([0-9.]+)\].*/TIME kernel_uptime_at_init_s=\1/' || true
if [[ $mode == pvh || $mode == disks ]]; then
    got=$(debugfs -R 'cat /vmm-token.txt' "$work/rootfs.ext4" 2>/dev/null || true)
    [[ $got == "$token" ]] && echo "HOST root_token=ok" || echo "HOST root_token=failed ($got)"
fi
if [[ $mode == disks ]]; then
    got=$(head -c $((4 + ${#token})) "$work/vdb.img")
    [[ $got == "VDB:$token" ]] && echo "HOST vdb_token=ok" || echo "HOST vdb_token=failed ($got)"
    got=$(head -c 3 "$work/vdc.img" | tr -d '\0')
    [[ -z $got ]] && echo "HOST vdc_unchanged=ok" || echo "HOST vdc_unchanged=failed ($got)"
fi
exit $done_ok

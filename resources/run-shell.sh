#!/usr/bin/env bash
# Build the test guest (cached) and the VMM, then boot the guest to a shell on this terminal.
# Type `reboot -f` (or `reboot`) in the guest to end the VM; vmm then exits 0.
# Extra arguments are passed to vmm (e.g. --cpus 2 --memory 512M -v).
set -euo pipefail
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
cd "$here/.."
kernel=$(resources/build-kernel.sh | grep '/vmlinux$')
rootfs=$(resources/build-rootfs.sh | grep '/rootfs.ext4$')
cargo build --release --quiet
# Boot a private copy so the cached image stays pristine; it persists between runs.
disk=${VMM_CACHE:-$HOME/.cache/vmm}/shell-rootfs.ext4
[[ -f $disk ]] || cp "$rootfs" "$disk"
echo "booting $kernel with root $disk (a Linux guest takes about a minute to reach the shell on hosts without hardware virtualization)" >&2
exec target/release/vmm --kernel "$kernel" --disk "$disk" "$@"

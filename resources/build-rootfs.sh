#!/usr/bin/env bash
# Build the vmm test-guest root file system from Debian's busybox-static:
#   rootfs.ext4        a 64 MiB ext4 image, made without mounting (mke2fs -d)
#   initramfs.cpio.gz  the same tree as a gzip'd newc cpio archive
#   initramfs.cpio     the same archive uncompressed (not printed; boots faster
#                      on the development host, where the guest kernel's
#                      inflate is slow)
# Both hold busybox and its applet links, /dev /proc /sys /tmp /root /etc, our
# init script (resources/rootfs/init) as /init and /sbin/init, and /bin/tcpblast
# (resources/rootfs/tcpblast.c, built static with the host's gcc).
#
# Output: ${VMM_CACHE:-$HOME/.cache/vmm}/rootfs-<key>/{rootfs.ext4,initramfs.cpio.gz,initramfs.cpio}
# where <key> is a sha256 prefix over every input (package versions of
# busybox-static, e2fsprogs, cpio, gcc and libc6-dev, the init script,
# tcpblast.c, this script). A complete
# output folder is reused as is. Progress goes to stderr; the artifact paths go
# to stdout:
#     /…/rootfs-<key>/rootfs.ext4
#     /…/rootfs-<key>/initramfs.cpio.gz
#
# Tests write to rootfs.ext4: copy it before booting from it.
set -euo pipefail

script=$(readlink -f "${BASH_SOURCE[0]}")
here=$(dirname "$script")
init_script="$here/rootfs/init"
tcpblast_src="$here/rootfs/tcpblast.c"
cache=${VMM_CACHE:-$HOME/.cache/vmm}
image_size=64M

log() { printf 'build-rootfs: %s\n' "$*" >&2; }
die() { printf 'build-rootfs: error: %s\n' "$*" >&2; exit 1; }

[[ -f $init_script ]] || die "missing $init_script"
for tool in mke2fs cpio gzip dpkg-query gcc; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
busybox=/bin/busybox
[[ -x $busybox ]] || die "missing $busybox (apt-get install busybox-static)"

versions=""
for pkg in busybox-static e2fsprogs cpio gcc libc6-dev; do
    v=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) || die "$pkg is not installed"
    versions+="$pkg $v"$'\n'
done

key=$(
    {
        printf '%s' "$versions"
        printf 'size %s\n' "$image_size"
        printf 'init\n'; cat "$init_script"
        printf 'tcpblast\n'; cat "$tcpblast_src"
        printf 'script\n'; cat "$script"
    } | sha256sum | cut -c1-16
)
out="$cache/rootfs-$key"

print_paths() { printf '%s\n' "$out/rootfs.ext4" "$out/initramfs.cpio.gz"; }

if [[ -s $out/rootfs.ext4 && -s $out/initramfs.cpio.gz && -s $out/initramfs.cpio ]]; then
    log "up to date: $out"
    print_paths
    exit 0
fi

mkdir -p "$cache"
# One builder per key; a second caller waits and then finds the result.
exec 9>"$cache/rootfs-$key.lock"
flock 9
if [[ -s $out/rootfs.ext4 && -s $out/initramfs.cpio.gz && -s $out/initramfs.cpio ]]; then
    log "up to date: $out"
    print_paths
    exit 0
fi
stage=$(mktemp -d "$cache/rootfs-$key.tmp.XXXXXX")
chmod 0755 "$stage"
trap 'rm -rf "$stage"' EXIT
tree="$stage/tree"

log "key $key; populating the tree"
mkdir -p "$tree"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,root,etc,mnt,run}
chmod 1777 "$tree/tmp"
chmod 0700 "$tree/root"
cp "$busybox" "$tree/bin/busybox"
# One symlink per applet, where busybox itself would install it.
while IFS= read -r applet; do
    [[ -n $applet && $applet != bin/busybox ]] || continue
    mkdir -p "$tree/$(dirname "$applet")"
    ln -sf /bin/busybox "$tree/$applet"
done < <("$busybox" --list-full)
install -m 0755 "$init_script" "$tree/init"
install -m 0755 "$init_script" "$tree/sbin/init"
gcc -static -O2 -Wall -Werror -o "$tree/bin/tcpblast" "$tcpblast_src" || die "cannot build tcpblast"
strip "$tree/bin/tcpblast"

printf 'root:x:0:0:root:/root:/bin/sh\n' >"$tree/etc/passwd"
printf 'root:x:0:\n' >"$tree/etc/group"
printf 'vmm-guest\n' >"$tree/etc/hostname"
printf 'export PS1="vmm-guest:\\w# "\n' >"$tree/etc/profile"
printf '/dev/root / auto rw 0 1\n' >"$tree/etc/fstab"

# The kernel opens /dev/console for init before anything mounts devtmpfs on an
# initramfs; the node needs root (init copes without it).
if [[ $(id -u) == 0 ]]; then
    mknod -m 0600 "$tree/dev/console" c 5 1
    mknod -m 0666 "$tree/dev/null" c 1 3
else
    log "not root: no /dev/console node in the tree (init reopens its console)"
fi

log "making initramfs.cpio and initramfs.cpio.gz"
(cd "$tree" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0) >"$stage/initramfs.cpio"
gzip -9n <"$stage/initramfs.cpio" >"$stage/initramfs.cpio.gz"

log "making rootfs.ext4 ($image_size, mke2fs -d)"
truncate -s "$image_size" "$stage/rootfs.ext4"
mke2fs -q -F -t ext4 -L vmm-root -E root_owner=0:0 -d "$tree" \
    "$stage/rootfs.ext4" "$image_size" >&2 || die "mke2fs failed"
e2fsck -fn "$stage/rootfs.ext4" >/dev/null 2>&1 || die "the new ext4 image does not pass e2fsck"

rm -rf "$tree"
rm -rf "$out"
mv "$stage" "$out"
trap - EXIT
rm -f "$cache/rootfs-$key.lock"
log "done: $(du -sh "$out" | cut -f1) in $out"
print_paths

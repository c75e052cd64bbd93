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
# rootfs.ext4 alone also holds the benchmark tools from Debian's fio and iperf3
# packages: /usr/bin/fio, /usr/bin/iperf3, every shared library ldd lists for
# them and the dynamic loader (~85 MB, kept out of the initramfs), and the fio
# job file /etc/vmm-bench.fio (resources/rootfs/bench.fio), and
# /usr/lib/vmm-shmshim.so (resources/rootfs/shmshim.c: SysV shared memory and
# timerfd for fio, which the guest kernel lacks).
#
# Output: ${VMM_CACHE:-$HOME/.cache/vmm}/rootfs-<key>/{rootfs.ext4,initramfs.cpio.gz,initramfs.cpio}
# where <key> is a sha256 prefix over every input (package versions of
# busybox-static, e2fsprogs, cpio, gcc, libc6-dev, fio and iperf3, the init
# script, tcpblast.c, bench.fio, shmshim.c, this script). A complete
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
fio_job="$here/rootfs/bench.fio"
shmshim_src="$here/rootfs/shmshim.c"
bench_tools=(/usr/bin/fio /usr/bin/iperf3)
cache=${VMM_CACHE:-$HOME/.cache/vmm}
image_size=192M

log() { printf 'build-rootfs: %s\n' "$*" >&2; }
die() { printf 'build-rootfs: error: %s\n' "$*" >&2; exit 1; }

[[ -f $init_script ]] || die "missing $init_script"
for tool in mke2fs cpio gzip dpkg-query gcc; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
busybox=/bin/busybox
[[ -x $busybox ]] || die "missing $busybox (apt-get install busybox-static)"
for tool in "${bench_tools[@]}"; do
    [[ -x $tool ]] || die "missing $tool (apt-get install fio iperf3)"
done

versions=""
for pkg in busybox-static e2fsprogs cpio gcc libc6-dev fio iperf3; do
    v=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) || die "$pkg is not installed"
    versions+="$pkg $v"$'\n'
done

key=$(
    {
        printf '%s' "$versions"
        printf 'size %s\n' "$image_size"
        printf 'init\n'; cat "$init_script"
        printf 'tcpblast\n'; cat "$tcpblast_src"
        printf 'bench.fio\n'; cat "$fio_job"
        printf 'shmshim\n'; cat "$shmshim_src"
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

# The benchmark tools, on the ext4 image only: each binary, the libraries ldd
# resolves for it (at the same paths, so their RUNPATHs still hold) and the loader.
log "adding ${bench_tools[*]} and their libraries to the ext4 tree"
install -m 0644 "$fio_job" "$tree/etc/vmm-bench.fio"
mkdir -p "$tree/usr/lib"
gcc -shared -fPIC -O2 -Wall -Werror -pthread -o "$tree/usr/lib/vmm-shmshim.so" "$shmshim_src" ||
    die "cannot build shmshim.so"
for tool in "${bench_tools[@]}"; do
    install -D -m 0755 "$tool" "$tree$tool"
    libs=$(ldd "$tool" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }') ||
        die "ldd $tool failed"
    for lib in $libs; do
        [[ -e $tree$lib ]] || install -D -m 0755 "$(readlink -f "$lib")" "$tree$lib"
    done
done
chroot "$tree" /usr/bin/fio --version >/dev/null 2>&1 ||
    [[ $(id -u) != 0 ]] || die "fio does not run in the new tree (a library missing?)"

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

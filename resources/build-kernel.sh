#!/usr/bin/env bash
# Build the vmm test-guest kernel (vmlinux with the PVH note, and bzImage) from
# Debian's linux-source-6.1 package, our config fragment and our patches.
#
# Output: ${VMM_CACHE:-$HOME/.cache/vmm}/kernel-<key>/{vmlinux,bzImage,config}
# where <key> is a sha256 prefix over every input (the linux-source package
# version, config.fragment, every patch, this script). A complete output folder
# is reused as is. Progress goes to stderr; the artifact paths go to stdout:
#     /…/kernel-<key>/vmlinux
#     /…/kernel-<key>/bzImage
#
# Needs: linux-source-6.1, gcc, make, bc, bison, flex, libelf-dev, libssl-dev.
# Environment: VMM_CACHE (cache root), VMM_KERNEL_JOBS (default: nproc).
set -euo pipefail

script=$(readlink -f "${BASH_SOURCE[0]}")
here=$(dirname "$script")
fragment="$here/kernel/config.fragment"
patch_dir="$here/kernel/patches"
src_pkg=linux-source-6.1
src_tar=/usr/src/linux-source-6.1.tar.xz
cache=${VMM_CACHE:-$HOME/.cache/vmm}
jobs=${VMM_KERNEL_JOBS:-$(nproc)}

log() { printf 'build-kernel: %s\n' "$*" >&2; }
die() { printf 'build-kernel: error: %s\n' "$*" >&2; exit 1; }

[[ -f $fragment ]] || die "missing $fragment"
[[ -f $src_tar ]] || die "missing $src_tar (apt-get install $src_pkg)"
pkg_version=$(dpkg-query -W -f='${Version}' "$src_pkg" 2>/dev/null) ||
    die "cannot query the version of $src_pkg (is it installed?)"

shopt -s nullglob
patches=("$patch_dir"/*.patch)
shopt -u nullglob

# The cache key: every input that changes the artifacts.
key=$(
    {
        printf 'package %s %s\n' "$src_pkg" "$pkg_version"
        printf 'fragment\n'; cat "$fragment"
        for p in "${patches[@]}"; do
            printf 'patch %s\n' "$(basename "$p")"; cat "$p"
        done
        printf 'script\n'; cat "$script"
    } | sha256sum | cut -c1-16
)
out="$cache/kernel-$key"

print_paths() { printf '%s\n' "$out/vmlinux" "$out/bzImage"; }

if [[ -s $out/vmlinux && -s $out/bzImage ]]; then
    log "up to date: $out"
    print_paths
    exit 0
fi

mkdir -p "$cache"
# One builder per key; a second caller waits and then finds the result.
exec 9>"$cache/kernel-$key.lock"
if ! flock -n 9; then
    log "another build of kernel-$key is running; waiting for it"
    flock 9
fi
if [[ -s $out/vmlinux && -s $out/bzImage ]]; then
    log "up to date: $out"
    print_paths
    exit 0
fi

build="$cache/kernel-$key.build"
src="$build/linux"
blog="$build/build.log"
rm -rf "$build"
mkdir -p "$src"
start=$SECONDS

log "key $key ($src_pkg $pkg_version, ${#patches[@]} patch(es))"
log "extracting $src_tar into $src"
tar -xJf "$src_tar" -C "$src" --strip-components=1

for p in "${patches[@]}"; do
    log "applying $(basename "$p")"
    patch -d "$src" -p1 --forward --batch --quiet <"$p" >>"$blog" 2>&1 ||
        die "patch $(basename "$p") does not apply (see $blog)"
done

kmake() {
    make -C "$src" ARCH=x86_64 KBUILD_BUILD_USER=vmm KBUILD_BUILD_HOST=vmm "$@" >>"$blog" 2>&1
}

log "configuring (allnoconfig + config.fragment, then olddefconfig)"
kmake KCONFIG_ALLCONFIG="$fragment" allnoconfig || die "allnoconfig failed (see $blog)"
kmake olddefconfig || die "olddefconfig failed (see $blog)"

# Every line of the fragment must hold in the final .config: "CONFIG_X=v"
# exactly, and "# CONFIG_X is not set" as not =y/=m.
bad=0
while IFS= read -r line; do
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        if ! grep -qxF -- "$line" "$src/.config"; then
            have=$(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" "$src/.config" || true)
            log "config: wanted '$line', got '${have:-<absent>}'"
            bad=1
        fi
    elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        if grep -qE "^${BASH_REMATCH[1]}=" "$src/.config"; then
            log "config: wanted '$line', got '$(grep -E "^${BASH_REMATCH[1]}=" "$src/.config")'"
            bad=1
        fi
    fi
done <"$fragment"
((bad == 0)) || die "the config fragment did not stick (tree kept in $build)"
log "config verified: every option of the fragment holds"

log "building vmlinux and bzImage with make -j$jobs (log: $blog)"
if ! kmake -j"$jobs" vmlinux bzImage; then
    tail -n 30 "$blog" >&2
    die "kernel build failed (tree kept in $build)"
fi

stage="$cache/kernel-$key.tmp"
rm -rf "$stage"
mkdir -p "$stage"
# Drop the debug info but keep the symbols and every note (the PVH entry).
objcopy --strip-debug "$src/vmlinux" "$stage/vmlinux"
cp "$src/arch/x86/boot/bzImage" "$stage/bzImage"
cp "$src/.config" "$stage/config"
# XEN_ELFNOTE_PHYS32_ENTRY is note type 18 (0x12) with owner "Xen".
if ! readelf -n "$stage/vmlinux" |
    grep -qE '^ +Xen[[:space:]]+0x[0-9a-f]+[[:space:]]+(Unknown note type: \(0x00000012\)|.*PHYS32_ENTRY)'; then
    readelf -n "$stage/vmlinux" >&2 || true
    die "vmlinux has no XEN_ELFNOTE_PHYS32_ENTRY note (is CONFIG_PVH on?)"
fi
rm -rf "$out"
mv "$stage" "$out"

log "cleaning the source tree $build"
rm -rf "$build"
rm -f "$cache/kernel-$key.lock"
log "done in $((SECONDS - start)) s: $(du -sh "$out" | cut -f1) in $out"
print_paths

#!/usr/bin/env bash
# Unpacks the guest kernel of the microvm tier: Debian's cloud kernel (the newest
# linux-image-*-cloud-amd64 the configured mirror offers), downloaded with `apt-get download`
# and unpacked with `dpkg -x` — never installed on the host. Output:
#   artifacts/kernel/vmlinuz           the kernel as packaged (bzImage; a symlink into the unpacked tree)
#   artifacts/kernel/vmlinux           the same kernel uncompressed, when it has a PVH entry point:
#                                      QEMU loads it directly (no decompression in the guest, which
#                                      under TCG costs ~0.6 s of every boot). Moat prefers it.
#   artifacts/kernel/modules           its modules directory (lib/modules/VERSION)
#   artifacts/kernel/release           the kernel release, e.g. 6.1.0-41-cloud-amd64
#   artifacts/kernel/root/             the unpacked package
# Idempotent: a no-op when the unpacked kernel is already the newest one offered.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/artifacts/kernel"
mkdir -p "$out"

# The meta-package always depends on the newest ABI; fall back to a search of the package names.
pkg="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9].*-cloud-amd64$/ { print $2; exit }')"
if [ -z "$pkg" ]; then
  pkg="$(apt-cache search --names-only '^linux-image-[0-9.]+-[0-9]+-cloud-amd64$' | awk '{ print $1 }' | sort -V | tail -1)"
fi
if [ -z "$pkg" ]; then
  if [ -e "$out/vmlinuz" ]; then
    echo "kernel.sh: the mirror offers no linux-image-*-cloud-amd64 (apt-get update?); keeping $(cat "$out/release")" >&2
    exit 0
  fi
  echo "kernel.sh: no linux-image-*-cloud-amd64 package found; run apt-get update (Debian mirror needed)" >&2
  exit 1
fi
release="${pkg#linux-image-}"
if [ -e "$out/vmlinuz" ] && [ "$(cat "$out/release" 2>/dev/null)" = "$release" ] && [ -d "$out/root/lib/modules/$release" ] \
   && { [ -e "$out/vmlinux" ] || ! command -v lz4 >/dev/null; }; then
  exit 0
fi

echo "==> unpacking guest kernel $pkg (dpkg -x, not installed)" >&2
work="$(mktemp -d "$out/.work.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# apt-get download writes into the current directory; as root it drops to _apt, which needs write access.
chmod 0777 "$work"
(cd "$work" && apt-get download -qq "$pkg")
deb="$(ls "$work"/*.deb)"
dpkg -x "$deb" "$work/root"
[ -f "$work/root/boot/vmlinuz-$release" ] || { echo "kernel.sh: $deb has no boot/vmlinuz-$release" >&2; exit 1; }
[ -d "$work/root/lib/modules/$release" ] || { echo "kernel.sh: $deb has no lib/modules/$release" >&2; exit 1; }

# The uncompressed kernel: find the payload of the bzImage by its compression's magic number and
# decompress it (what the kernel's scripts/extract-vmlinux does). Kept only if it is an ELF with
# the PVH note (Xen note type 18, XEN_ELFNOTE_PHYS32_ENTRY) that QEMU needs to boot it as is.
extract_vmlinux() {
  local image="$1" target="$2" magic tool offset
  for pair in '\002\041\114\030:lz4 -dc' '\050\265\057\375:zstd -dc' '\037\213\010:gzip -dc' '\3757zXZ\000:xz -dc'; do
    magic="${pair%%:*}"; tool="${pair#*:}"
    command -v "${tool%% *}" >/dev/null || continue
    for offset in $(LC_ALL=C grep -abo "$(printf "$magic")" "$image" 2>/dev/null | cut -d: -f1 | head -5); do
      tail -c "+$((offset + 1))" "$image" | $tool > "$target" 2>/dev/null || true
      if [ "$(head -c 4 "$target" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ]; then
        if command -v readelf >/dev/null && readelf -n "$target" 2>/dev/null | grep -q 'Xen.*0x00000012\|Unknown note type: (0x00000012)'; then
          return 0
        fi
      fi
    done
  done
  rm -f "$target"
  return 1
}
if extract_vmlinux "$work/root/boot/vmlinuz-$release" "$work/vmlinux"; then
  mv "$work/vmlinux" "$work/root/boot/vmlinux-$release"
else
  echo "kernel.sh: no PVH-bootable vmlinux could be extracted (lz4/readelf missing?); Moat boots the bzImage" >&2
fi

rm -rf "$out/root.old"
[ -d "$out/root" ] && mv "$out/root" "$out/root.old"
mv "$work/root" "$out/root"
ln -sfn "root/boot/vmlinuz-$release" "$out/vmlinuz"
if [ -f "$out/root/boot/vmlinux-$release" ]; then ln -sfn "root/boot/vmlinux-$release" "$out/vmlinux"; else rm -f "$out/vmlinux"; fi
ln -sfn "root/lib/modules/$release" "$out/modules"
printf '%s\n' "$release" > "$out/release"
rm -rf "$out/root.old"
echo "guest kernel $release in $out" >&2

#!/usr/bin/env bash
# Builds the built-in templates' root filesystems with mmdebstrap, once. Output:
#   artifacts/templates/base.tar   Debian 12 minbase + bash, coreutils, python3 (and user "user", uid 1000)
#   artifacts/templates/code-interpreter-v1.tar   base + numpy, pandas, matplotlib and Node.js (E2B's code interpreter template)
# Re-running is a no-op unless this script changed (its hash is stamped next to the output).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/artifacts/templates"
mkdir -p "$out"
stamp="$(sha256sum "$0" | cut -c1-16)"

build() {
  local name="$1"; shift
  local target="$out/$name.tar"
  if [ -f "$target" ] && [ "$(cat "$target.stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  echo "==> building template '$name' with mmdebstrap (once; about a minute)"
  local tmp="$out/$name.partial.tar"
  rm -f "$tmp"
  mmdebstrap --quiet --variant=minbase --mode=root \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='chroot "$1" groupadd --gid 1000 user' \
    --customize-hook='chroot "$1" useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash user' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*.log' \
    --customize-hook='printf "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n" > "$1/etc/hosts"' \
    "$@" bookworm "$tmp"
  mv "$tmp" "$target"
  echo "$stamp" > "$target.stamp"
}

build base --include=bash,coreutils,python3,procps,ca-certificates,less,file,findutils,grep,sed,tar,gzip,xz-utils
# Debian's fonttools pulls scipy, which pulls pythran and a C++ toolchain; a sandbox runs code, it does not build it.
build code-interpreter-v1 --aptopt='APT::Install-Recommends "false"' \
  --customize-hook='chroot "$1" dpkg --purge --force-depends binutils binutils-common binutils-x86-64-linux-gnu cpp cpp-12 g++ g++-12 gcc gcc-12 libasan8 libbinutils libboost-dev libboost1.74-dev libc6-dev libcc1-0 libcrypt-dev libctf-nobfd0 libctf0 libexpat1-dev libgcc-12-dev libgprofng0 libisl23 libitm1 libjansson4 liblsan0 libmpc3 libmpfr6 libnsl-dev libopenblas-dev libopenblas-pthread-dev libpython3-all-dev libpython3-dev libpython3.11-dev libstdc++-12-dev libtirpc-dev libtsan2 libubsan1 libxsimd-dev linux-libc-dev python3-all-dev python3-dev python3-pythran python3.11-dev rpcsvc-proto zlib1g-dev >/dev/null 2>&1' \
  --include=bash,coreutils,python3,procps,ca-certificates,less,file,findutils,grep,sed,tar,gzip,xz-utils,python3-numpy,python3-pandas,python3-matplotlib,nodejs

#!/usr/bin/env bash
# The set-up shared by ./run.sh and ./test.sh. Idempotent: installs what is missing, rebuilds
# what changed, and leaves the CLI at ./bin/moat.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

say() { printf '==> %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "moat set-up: run as root (sandboxes need runc, mounts and cgroups)" >&2
  exit 1
fi

# 1. Debian packages.
packages=(runc runsc qemu-system-x86 qemu-utils busybox-static nftables iproute2 mmdebstrap e2fsprogs tar gcc libc6-dev docker-registry skopeo musl-tools lz4 chromium)
# Node and npm run the stock E2B SDKs in the E2B compatibility tests (tests/e2b). A node that is
# already there (e.g. NodeSource's nodejs, which bundles npm and conflicts with Debian's npm) is kept.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then packages+=(nodejs npm); fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. The .NET SDK.
if ! command -v dotnet >/dev/null || ! dotnet --list-sdks | grep -q '^10\.'; then
  echo "moat set-up: the .NET 10 SDK is required (dotnet on PATH)" >&2
  exit 1
fi
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1

# 3. The agent (NativeAOT), the CLI, the built-in templates.
say "building moat-agent"
src/Moat.Agent/publish.sh "$root/artifacts/agent"
say "building the moat CLI"
dotnet publish src/Moat.Cli -c Release -o artifacts/cli --nologo -v quiet
build/templates.sh
build/kernel.sh
# The unprivileged user QEMU drops to once a microVM has opened its files (Moat:Qemu:User).
id moat-vmm >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin moat-vmm

mkdir -p bin
ln -sfn ../artifacts/cli/moat bin/moat
say "ready: ./bin/moat"

#!/usr/bin/env bash
# Publishes moat-agent (NativeAOT) and lays out what gets injected read-only into a sandbox:
#   OUTDIR/moat-agent            the agent
#   OUTDIR/lib/                  the ELF loader and every shared library the agent needs (from this host)
#   OUTDIR/chan/                 empty: the mount point of the host's channel directory
# Started inside the sandbox as
#   /.moat/lib/ld-linux-x86-64.so.2 --library-path /.moat/lib /.moat/moat-agent --listen unix:/.moat/chan/agent.sock
# Idempotent; does nothing (in milliseconds) when no input changed since the last run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/artifacts/agent}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

mkdir -p "$here/obj"
exec 9>"$here/obj/publish.lock"
flock 9

# Everything that goes into the binary: the agent, the protocol, the build settings.
stamp="$(
  cd "$root"
  find src/Moat.Agent src/Moat.Protocol \( -name bin -o -name obj \) -prune -o -type f \
       \( -name '*.cs' -o -name '*.c' -o -name '*.h' -o -name '*.csproj' -o -name '*.proto' -o -name '*.props' -o -name '*.targets' \) -print \
    | LC_ALL=C sort | xargs sha256sum
  sha256sum Directory.Build.props Directory.Packages.props 2>/dev/null || true
  dotnet --version 2>/dev/null || true
  gcc --version 2>/dev/null | head -1 || true
)"
stamp="$(printf '%s' "$stamp" | sha256sum | cut -d' ' -f1)"
if [[ -x "$out/moat-agent" && -e "$out/lib/ld-linux-x86-64.so.2" && -d "$out/chan" && "$(cat "$out/.stamp" 2>/dev/null || true)" == "$stamp" ]]; then
  exit 0
fi

publish="$here/obj/publish-out"
rm -rf "$publish"
# A private artifacts path: no obj/ or bin/ shared with builds of the solution running meanwhile.
dotnet publish "$here/Moat.Agent.csproj" -c Release -r linux-x64 -o "$publish" --artifacts-path "$here/obj/publish-artifacts" \
  --nologo -v quiet -clp:ErrorsOnly >&2

tmp="$out/.new"
rm -rf "$tmp"
mkdir -p "$tmp/lib" "$tmp/chan"
cp "$publish/moat-agent" "$tmp/moat-agent"
chmod 0755 "$tmp/moat-agent"

# The loader and libraries as ldd resolves them on this host, copied as real files (no symlinks
# that would dangle inside a sandbox). libc and libm are always included.
mapfile -t libs < <(ldd "$tmp/moat-agent" | awk '/=>/ { if ($3 ~ /^\//) print $3; next } $1 ~ /^\// { print $1 }')
loader=""
for lib in "${libs[@]}"; do
  case "$(basename "$lib")" in
    ld-linux-x86-64.so.*) loader="$lib" ;;
    *) cp -L "$lib" "$tmp/lib/$(basename "$lib")" ;;
  esac
done
[[ -n "$loader" ]] || { echo "publish.sh: ldd shows no ELF loader for moat-agent" >&2; exit 1; }
cp -L "$loader" "$tmp/lib/ld-linux-x86-64.so.2"
for must in libc.so.6 libm.so.6; do
  if [[ ! -e "$tmp/lib/$must" ]]; then
    path="$(ldconfig -p | awk -v n="$must" '$1 == n && /x86-64/ { print $NF; exit }')"
    [[ -n "$path" ]] && cp -L "$path" "$tmp/lib/$must"
  fi
done
chmod 0755 "$tmp/lib/"*

# Swap in the new layout (chan/ may be a mount point in use: keep the directory itself).
mkdir -p "$out/lib" "$out/chan"
rm -f "$out/lib/"*
cp -a "$tmp/lib/." "$out/lib/"
cp "$tmp/moat-agent" "$out/moat-agent.new" && mv -f "$out/moat-agent.new" "$out/moat-agent"
rm -rf "$tmp"
printf '%s\n' "$stamp" > "$out/.stamp"
echo "published moat-agent to $out ($(stat -c %s "$out/moat-agent") bytes)" >&2

#!/usr/bin/env bash
# Installs what is missing, builds Moat, and starts `moat serve` on http://127.0.0.1:8080 with its
# data in /var/lib/moat (override with MOAT_DATA or --data). Extra arguments go to `moat serve`.
set -euo pipefail
cd "$(dirname "$0")"
build/setup.sh
exec ./bin/moat serve "$@"

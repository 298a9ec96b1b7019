#!/usr/bin/env bash
# The same set-up as ./run.sh, then every test. The output ends with the test runner's summary.
set -euo pipefail
cd "$(dirname "$0")"
build/setup.sh
dotnet build Moat.slnx -c Debug --nologo -v quiet
exec dotnet test Moat.slnx -c Debug --no-build --nologo --logger "console;verbosity=normal" "$@"

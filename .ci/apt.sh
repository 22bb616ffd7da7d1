#!/usr/bin/env bash
# Install the Debian packages the PSD tests use as independent readers: ImageMagick (identify/convert)
# and GIMP 2.10 (gimp-console, Script-Fu batch). Idempotent and quiet: a second run only checks (< 1 s).
#
#   bash .ci/apt.sh        # needs root (or sudo); prints one line per package set installed
#
# Call ImageMagick as /usr/bin/identify and /usr/bin/convert (another `convert` may come first on PATH).
set -euo pipefail
need=()
command -v /usr/bin/identify >/dev/null 2>&1 || need+=(imagemagick)
command -v gimp-console-2.10 >/dev/null 2>&1 || need+=(gimp)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "apt.sh: installed ${need[*]}" >&2

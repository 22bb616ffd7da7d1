#!/usr/bin/env bash
# Install the Debian packages the PSD tests use as independent readers: ImageMagick (identify/convert)
# and GIMP (on Debian 12 that is GIMP 2.10: gimp-console-2.10, Script-Fu batch; on 13 it is GIMP 3,
# and the GIMP 2.10 PSD tests skip saying so). Idempotent and quiet: a second run only checks (~10 ms).
#
#   bash .ci/apt.sh        # needs root (or sudo)
#
# Call ImageMagick as /usr/bin/identify and /usr/bin/convert (another `convert` may come first on PATH).
set -euo pipefail
need=()
[ -x /usr/bin/identify ] && [ -x /usr/bin/convert ] || need+=(imagemagick)
dpkg -s gimp >/dev/null 2>&1 || need+=(gimp)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "apt.sh: need root or sudo to install ${need[*]}" >&2; exit 1; }
    SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 || {
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}
echo "apt.sh: installed ${need[*]}" >&2

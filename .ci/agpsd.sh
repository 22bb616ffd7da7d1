#!/usr/bin/env bash
# Install ag-psd (the npm PSD reader web editors use) for the tests' independent PSD check, and print the
# node_modules folder that holds it on stdout (tests read it from $STYLEBRIDGE_AG_PSD; .ci/test exports it).
#
#   STYLEBRIDGE_AG_PSD=$(bash .ci/agpsd.sh)
#
# Pinned: ag-psd 31.0.2 (its own dependencies, base64-js 1.5.1 and pako 2.1.0, are pinned exactly by it).
# Needs node and npm (Debian: apt-get install nodejs npm, done here as root when they are missing).
# Cached in ${STYLEBRIDGE_NODE_CACHE:-/var/cache/stylebridge}/ag-psd-VERSION (or ~/.cache/stylebridge when that
# is not writable); a second run only checks the cached copy (about a second).
set -euo pipefail
VERSION=31.0.2
log() { echo "agpsd.sh: $*" >&2; }

CACHE=${STYLEBRIDGE_NODE_CACHE:-/var/cache/stylebridge}
if [ -z "${STYLEBRIDGE_NODE_CACHE:-}" ] && ! { mkdir -p "$CACHE" && [ -w "$CACHE" ]; } 2>/dev/null; then
    CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/stylebridge
fi
DEST=$CACHE/ag-psd-$VERSION
mkdir -p "$CACHE"
exec 8>"$CACHE/.ag-psd.lock"
flock 8

installed() {
    [ -f "$DEST/node_modules/ag-psd/package.json" ] &&
        node -e 'process.exit(require(process.argv[1]).version === process.argv[2] ? 0 : 1)' \
            "$DEST/node_modules/ag-psd/package.json" "$VERSION" 2>/dev/null
}

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { log "ERROR: need node and npm (apt-get install nodejs npm)"; exit 1; }
        SUDO=sudo
    fi
    log "installing nodejs and npm"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null 2>&1 || {
        $SUDO apt-get update -qq >/dev/null
        $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
    }
fi

if ! installed; then
    log "installing ag-psd $VERSION into $DEST"
    tmp=$(mktemp -d "$CACHE/ag-psd.XXXXXX")
    chmod 755 "$tmp"
    echo '{"private": true}' > "$tmp/package.json"
    npm install --prefix "$tmp" --no-audit --no-fund --loglevel=error --save-exact "ag-psd@$VERSION" >&2
    rm -rf "$DEST"
    mv "$tmp" "$DEST"
    installed || { log "ERROR: ag-psd $VERSION did not install"; exit 1; }
fi
echo "$DEST/node_modules"

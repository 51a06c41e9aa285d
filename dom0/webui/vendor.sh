#!/usr/bin/env bash
# Refreshes the vendored xterm.js (dom0/webui/static/vendor/) from the npm registry.
# The web console has no build step at run time: these files are served as they are,
# so this script runs only when a developer bumps the version below and commits the result.
set -euo pipefail
XTERM_VERSION=6.0.0
here="$(cd "$(dirname "$0")" && pwd)"
vendor="$here/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@xterm/xterm@$XTERM_VERSION" >/dev/null && tar xzf ./*.tgz)
mkdir -p "$vendor"
cp "$work/package/lib/xterm.js" "$work/package/css/xterm.css" "$vendor/"
cp "$work/package/LICENSE" "$vendor/xterm-LICENSE"
printf '@xterm/xterm %s from the npm registry (lib/xterm.js, css/xterm.css, LICENSE); refresh with dom0/webui/vendor.sh\n' \
    "$XTERM_VERSION" > "$vendor/VERSION"

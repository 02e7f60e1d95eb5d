#!/usr/bin/env bash
# Quick start: the service on a project-local SoftHSM token with a demo key and chain.
# Installs or creates whatever is missing; run it again and it reuses what exists.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

bash scripts/install-system-deps.sh

if [ -z "${npm_config_nodedir:-}" ] && [ -d /usr/include/node ]; then export npm_config_nodedir=/usr; fi
if [ ! -d node_modules/graphene-pk11 ]; then say "installing npm dependencies"; npm ci --no-audit --no-fund; fi
# Builds only when a source changed since the last build; the package is reproducible, so its
# sha256 (printed below) stays the same from run to run until the plugin changes.
say "building (skipped when nothing changed)"; node scripts/build.mjs --if-changed
say "packaging the notation plugin"; node scripts/package-plugin.mjs >/dev/null
# The README and the printed commands call `hsm-signer`: npm link puts it on PATH as a symlink to
# dist/hsm-signer (a copy of that file would not find the project's node_modules).
if [ "$(readlink -f "$(command -v hsm-signer 2>/dev/null || echo /nonexistent)")" != "$(pwd -P)/dist/hsm-signer" ]; then
  say "putting hsm-signer on PATH (npm link)"
  npm link --no-audit --no-fund --ignore-scripts >/dev/null \
    || say "npm link failed: run it as root in $PWD, or give npm a prefix of your own (npm config set prefix ~/.local, with ~/.local/bin on PATH) and run npm link"
fi

# By name, not the first match of a glob: after `package-plugin --standalone`, dist/ also holds
# ..._<version>_linux_<arch>.tar.gz, which ls lists first in en_US.UTF-8 (it ignores punctuation).
PKG="dist/notation-hsm-signer_$(node -p 'require("./package.json").version').tar.gz"
export HSM_SIGNER_PLUGIN_PACKAGE="$PWD/$PKG"
exec bash scripts/demo-setup.sh "$@"

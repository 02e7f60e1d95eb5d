#!/usr/bin/env bash
# The one command that runs the tests on a fresh Debian machine with Node 20:
# installs SoftHSM2/OpenSC/openssl if missing, npm dependencies, then lint, build and mocha.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
# Native addons (pkcs11js) build offline against the installed Node headers.
if [ -z "${npm_config_nodedir:-}" ] && [ -d /usr/include/node ]; then export npm_config_nodedir=/usr; fi
if [ -n "${CI:-}" ] || [ ! -d node_modules/graphene-pk11 ]; then npm ci --no-audit --no-fund; fi
npm run --silent lint
npm test -- "$@"

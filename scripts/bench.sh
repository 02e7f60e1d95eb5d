#!/usr/bin/env bash
# npm run bench [-- --skip soak | --only soak]: the service's CPU per call and the plugin
# (test/bench/bench.ts), then the audit in PostgreSQL against the file store (audit-store-load.ts).
set -euo pipefail
cd "$(dirname "$0")/.."
node dist/test/bench/bench.js "$@"
case " $* " in *" --only soak "*) exit 0 ;; esac
node dist/test/bench/audit-store-load.js

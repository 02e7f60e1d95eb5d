#!/usr/bin/env bash
# Fails when src/gen/ is not what `npm run generate` makes from proto/ today (run in lint, so in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
npx --no-install buf generate --output "$tmp"
if ! diff -r "$tmp/src/gen" src/gen >"$tmp/diff.txt"; then
  echo "src/gen/ is stale: proto/ changed without \`npm run generate\`, or src/gen/ was edited by hand:" >&2
  head -40 "$tmp/diff.txt" >&2
  exit 1
fi

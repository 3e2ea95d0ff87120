#!/usr/bin/env bash
# Builds the dashboard (dashboard/ -> meshward/app/static/dashboard) with the pinned npm packages.
# `npm ci` runs only when package-lock.json's hash changed since the last install; the bundle is
# rebuilt only when a source is newer. Without node/npm it says so and leaves serve's API as is
# (the dashboard route then answers that it is not built).
set -euo pipefail
cd "$(dirname "$0")/../dashboard"
out=../meshward/app/static/dashboard
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "note: node/npm missing: the dashboard is not built (docs/dashboard.md)"; exit 0
fi
want=$(sha256sum package-lock.json | cut -d' ' -f1)
have=$(cat node_modules/.meshward-lock-sha256 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  echo "dashboard: npm ci (package-lock.json changed)"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > node_modules/.meshward-lock-sha256
fi
if [ ! -f "$out/dashboard.js" ] || [ -n "$(find src build.mjs node_modules/.meshward-lock-sha256 -newer "$out/dashboard.js" 2>/dev/null | head -1)" ]; then
  echo "dashboard: bundling with esbuild"
  node build.mjs
fi

#!/usr/bin/env bash
# Build FerretDB v1.24.2 (from the Go module proxy) into .tools/bin/ferretdb.
# tools/ferretdb/main.go explains why this wraps FerretDB's embeddable package instead of
# `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2` (that binary panics at start).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v go >/dev/null; then
  echo "build-ferretdb: Go is required (install it, e.g. apt-get install golang-go)" >&2
  exit 1
fi
mkdir -p .tools/bin
(cd tools/ferretdb && go build -trimpath -o ../../.tools/bin/ferretdb .)
echo "built .tools/bin/ferretdb (FerretDB v1.24.2, SQLite backend, telemetry off)"

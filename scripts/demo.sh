#!/usr/bin/env bash
# The main job: the offline end-to-end demo (coda demo). Creates/reuses .venv first.
# Usage: bash scripts/demo.sh [--quick] [--output DIR] [--data-dir DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh" test,hf,train
cd "$ROOT"
exec coda demo "$@"

#!/usr/bin/env bash
# The test suite. Creates/reuses .venv, then runs pytest (slow tests only with --slow).
# Fails when pytest collects nothing (exit code 5) as well as on any failure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh" test,hf,train
cd "$ROOT"
MARK=(-m "not slow")
ARGS=()
for a in "$@"; do
  if [ "$a" = "--slow" ]; then MARK=(); else ARGS+=("$a"); fi
done
set +e
# --dist loadgroup: tests marked xdist_group("name") share one worker (e.g. test_t5x.py's T5X
# runs, made once per module); the others are spread as with the default --dist load.
python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadgroup "${MARK[@]}" "${ARGS[@]}"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "[test] pytest collected no tests: failing." >&2; exit 1; fi
exit "$rc"

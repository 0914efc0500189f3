#!/usr/bin/env bash
# Creates (or reuses) .venv with Python 3.11 and installs coda_flax with the given extras.
# Installs with the exact tested versions of constraints.txt (setup.cfg holds ranges):
#     pip install -c constraints.txt -e .[extras]
# Reinstalls only when setup.cfg / setup.py / pyproject.toml / constraints.txt or the extras change.
# Usage: source scripts/env.sh [extras]     (default extras: test,hf,train)
#
# T5X (for tests/test_t5x.py) is not on the package index. When ../shared/wheels (beside the
# repository root) holds wheels of t5x / airio / jestimator, as in CI, they are installed too
# (`pip install --no-deps` + the few pinned packages they import; see that folder's README),
# once: the wheels' names and sizes are part of the stamp. CODA_NO_T5X=1 skips this; users
# install T5X from its repository (docs/t5x.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS="${1:-test,hf,train}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[env] creating $VENV with $("$PY" --version)"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
STAMP="$VENV/.coda_stamp"
WANT="$(cat "$ROOT/setup.cfg" "$ROOT/setup.py" "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -c1-16)-$EXTRAS"
if [ "$(head -n1 "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "[env] installing coda_flax[$EXTRAS] (first run takes a few minutes)"
  "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" -e "$ROOT[$EXTRAS]"
  echo "$WANT" > "$STAMP"
fi
# T5X from ../shared/wheels (line 2 of the stamp), only with the train extra (seqio, TF, gin).
T5X_WHEELS="$(cd "$ROOT/.." && pwd)/shared/wheels"
T5X_PINS=(grain==0.2.18 fiddle==0.3.1 cached-property==2.0.1 jaxtyping==0.3.11)
if [ -z "${CODA_NO_T5X:-}" ] && [[ ",$EXTRAS," == *",train,"* ]] \
    && compgen -G "$T5X_WHEELS/t5x-*.whl" >/dev/null; then
  T5X_WANT="t5x-$( (cd "$T5X_WHEELS" && ls -l --time-style=+ ./*.whl | awk '{print $5, $NF}'; \
                    echo "${T5X_PINS[*]}") | sha256sum | cut -c1-16)"
  if [ "$(sed -n 2p "$STAMP" 2>/dev/null)" != "$T5X_WANT" ]; then
    echo "[env] installing T5X from $T5X_WHEELS"
    "$VENV/bin/python" -m pip install -q --no-deps "$T5X_WHEELS"/*.whl
    "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" "${T5X_PINS[@]}"
    printf '%s\n%s\n' "$WANT" "$T5X_WANT" > "$STAMP"
  fi
fi
export PATH="$VENV/bin:$PATH"

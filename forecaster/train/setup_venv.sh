#!/usr/bin/env bash
# Create (or reuse) the forecaster's Python environment and install the pinned
# requirements. Idempotent: when the venv already matches requirements.txt it
# returns at once.
#
#   forecaster/train/setup_venv.sh             # venv at $SHARDCAST_VENV (default <repo>/.venv)
#   forecaster/train/setup_venv.sh --ort-path  # also print the libonnxruntime the Rust `ort` crate loads
#
# Needs Python >= 3.11 (set $PYTHON to choose the interpreter) and PyPI.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=${SHARDCAST_VENV:-$repo/.venv}
req=$repo/forecaster/train/requirements.txt
stamp=$venv/.shardcast-requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup_venv: $venv is up to date" >&2
else
  if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
  echo "setup_venv: installed $req into $venv" >&2
fi

if [ "${1:-}" = "--ort-path" ]; then
  "$venv/bin/python" - <<'PY'
import glob, os, onnxruntime
capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
libs = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so*")) + glob.glob(os.path.join(capi, "libonnxruntime*.dylib")))
print(libs[0] if libs else "")
PY
fi

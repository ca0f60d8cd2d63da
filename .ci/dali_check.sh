#!/usr/bin/env bash
# Installs the pinned DALI (no GPU needed) in its own venv and checks the reader's argument names
# against its operator schema (.ci/dali_schema_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
DALI_VENV=${DALI_VENV:-/tmp/avfast-dali-venv}
version=$(sed -n 's/^DALI_VERSION = "\(.*\)"/\1/p' avfast/data/video.py)
grep -q "nvidia-dali-cuda130==$version" pyproject.toml || { echo "dali-check: pyproject's gpu extra does not pin nvidia-dali-cuda130==$version"; exit 1; }
[ -x "$DALI_VENV/bin/python" ] || python3 -m venv "$DALI_VENV"
"$DALI_VENV/bin/python" -c "import nvidia.dali as d, sys; sys.exit(d.__version__ != '$version')" 2>/dev/null \
  || "$DALI_VENV/bin/python" -m pip install -q --disable-pip-version-check "nvidia-dali-cuda130==$version"
"$DALI_VENV/bin/python" .ci/dali_schema_check.py

#!/usr/bin/env bash
# The real CUDA build of avfast._C: PyPI's CUDA torch (2.14.1, CUDA 13.0) in its own venv
# (CUDA_VENV, default /tmp/avfast-cuda-venv; pip's cache keeps the 5.4 GB wheel set), nvcc from PATH,
# AVFAST_BUILD_CUDA=1 for sm_80 and sm_90; then imports avfast._C and checks every CUDA op is
# registered. Nothing runs on a GPU. Under CI=true a missing nvcc is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CUDA_VENV=${CUDA_VENV:-/tmp/avfast-cuda-venv}
CUDA_TORCH=${CUDA_TORCH:-torch==2.14.1}
if ! command -v nvcc >/dev/null 2>&1; then
  if [ "${CI:-}" = "true" ]; then echo "cuda-build-check: nvcc not found (CI=true: failure)"; exit 1; fi
  echo "cuda-build-check: nvcc not found: not run"; exit 0
fi
start=$(date +%s)
if [ ! -x "$CUDA_VENV/bin/python" ]; then python3 -m venv "$CUDA_VENV"; fi
PY="$CUDA_VENV/bin/python"
"$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('${CUDA_TORCH#torch==}') else 1)" 2>/dev/null \
  || "$PY" -m pip install -q --disable-pip-version-check "$CUDA_TORCH" numpy ninja "setuptools>=64" wheel
t_env=$(date +%s)
# torch guesses CUDA_HOME from nvcc's folder, which may hold a wrapper without headers: nvcc's own
# TOP (its --dryrun output) is the toolkit root.
if [ -z "${CUDA_HOME:-}" ]; then
  CUDA_HOME=$(nvcc --dryrun -c -x cu /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
  CUDA_HOME=$(cd "$CUDA_HOME" && pwd -P)
fi
export CUDA_HOME
echo "cuda-build-check: torch $("$PY" -c 'import torch; print(torch.__version__)'), nvcc $(nvcc --version | tail -2 | head -1), CUDA_HOME=$CUDA_HOME"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
# build out of tree: a copy of the sources, so the repo's own (CPU) avfast._C is untouched
tar --exclude=.venv --exclude=.git --exclude='*.so' --exclude=build -cf - setup.py pyproject.toml README.md avfast kernels csrc \
  | tar -xf - -C "$build"
( cd "$build" && AVFAST_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}" \
  MAX_JOBS=${MAX_JOBS:-2} "$PY" setup.py -q build_ext --inplace >"$build/build.log" 2>&1 ) \
  || { tail -60 "$build/build.log"; echo "cuda-build-check: build FAILED"; exit 1; }
t_build=$(date +%s)
( cd "$build" && "$PY" - <<'PYEOF'
import glob, re, sys
import torch
# the .so is loaded directly (importing the avfast package would need its CPU-side dependencies)
so = glob.glob("avfast/_C*.so")
if len(so) != 1:
    sys.exit(f"cuda-build-check: expected one avfast/_C*.so, found {so}")
torch.ops.load_library(so[0])
names = set()
for f in glob.glob("csrc/cuda/*.cpp"):
    names |= set(re.findall(r'm\.def\(\s*"(\w+)', open(f).read()))
if not names:
    sys.exit("cuda-build-check: no op declarations found in csrc/cuda/*.cpp")
missing = [n for n in sorted(names)
           if not torch._C._dispatch_has_kernel_for_dispatch_key(f"avfast_C::{n}", "CUDA")]
print(f"cuda-build-check: {so[0]}: CUDA kernels registered for {sorted(set(names) - set(missing))}")
if missing:
    sys.exit(f"cuda-build-check: no CUDA kernel registered for {missing}")
PYEOF
)
echo "cuda-build-check: env $((t_env - start)) s, build $((t_build - t_env)) s, total $(( $(date +%s) - start )) s"

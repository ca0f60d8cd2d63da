#!/usr/bin/env bash
# One script for a CUDA machine (fits ~8 minutes on one H100-class GPU): build avfast._C with CUDA
# (parallel jobs), `pytest -m gpu`, compute-sanitizer memcheck on tiny cases of every CUDA/Triton
# kernel ("not run" when compute-sanitizer is missing), a quick gpu_report; results as JSON in
# GPU_OUT (default gpu-check-out/). Never passes silently: each step's status is in summary.json.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${GPU_OUT:-gpu-check-out}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
declare -A status secs
step() {  # step NAME COMMAND...
  local name=$1; shift
  local t=$(date +%s)
  echo "== gpu-check: $name"
  if "$@" >"$OUT/$name.log" 2>&1; then status[$name]=pass; else status[$name]=FAIL; fi
  secs[$name]=$(( $(date +%s) - t ))
  tail -5 "$OUT/$name.log"
}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu-check: no CUDA GPU visible to torch: not run"; echo '{"status": "not run: no GPU"}' >"$OUT/summary.json"; exit 1
fi
step build env AVFAST_BUILD_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-} \
  "$PY" -m pip install -q --no-build-isolation -e .
step pytest_gpu "$PY" -m pytest -q -m gpu tests --junitxml="$OUT/pytest_gpu.xml"
step production_tiles "$PY" -m pytest -q tests/ops/test_production_tiles.py tests/gpu_compile
if command -v compute-sanitizer >/dev/null 2>&1; then
  step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" benchmarks/gpu/sanitizer_cases.py
else
  echo "gpu-check: compute-sanitizer not found: memcheck not run"; status[memcheck]="not run"; secs[memcheck]=0
fi
step gpu_report "$PY" benchmarks/gpu_report.py --json "$OUT/gpu_report.json"
"$PY" - "$OUT" <<PYEOF
import json, sys
steps = {$(for k in "${!status[@]}"; do printf '"%s": {"status": "%s", "seconds": %s}, ' "$k" "${status[$k]}" "${secs[$k]}"; done)}
import torch
info = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__, cuda=torch.version.cuda, steps=steps)
json.dump(info, open(sys.argv[1] + "/summary.json", "w"), indent=1)
print(json.dumps(info, indent=1))
PYEOF
for k in "${!status[@]}"; do [ "${status[$k]}" = FAIL ] && exit 1; done
exit 0

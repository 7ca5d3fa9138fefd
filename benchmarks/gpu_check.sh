#!/usr/bin/env bash
# GPU check, a few minutes of GPU time (under 8 minutes on one H200), installs nothing:
#   1. the machine and the Python environment (nvidia-smi, torch / CUDA versions);
#   2. the tests marked `cuda` (they skip without a GPU): pytest -m cuda;
#   3. the benchmark's micro part on ResNet-50, 224 px, batch 64: fp32 (torch's defaults; the page's
#      header records the TF32 settings) and bf16 autocast + channels_last, the forward bound at
#      batch sizes 16..256, incremental against full occlusion, the six methods' deletion + insertion.
# Every output goes into one folder: $OUT when set, else outputs/gpu_check/ in the checkout. Each
# step is logged as it runs (tee) and bounded by `timeout`, so a run cut short still leaves the
# logs, the JUnit XML of the tests and whatever the benchmark finished; summary.txt lists each
# step's exit status.
#
# Python: $PYTHON when set, else the project's .venv (carried over with the checkout: the device
# machine has no network, so `make install` cannot recreate it there), else python3. It must hold
# torch with CUDA and the `test` extra (captum, grad-cam, quantus); salbench itself is imported
# from this checkout (an installed copy is not needed).
#
#   bash benchmarks/gpu_check.sh            # OUT=/some/folder bash benchmarks/gpu_check.sh
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTDIR="${OUT:-$ROOT/outputs/gpu_check}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
  PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
  PY="$ROOT/.venv/bin/python"
else
  PY="$(command -v python3)"
fi
TESTS_SECONDS="${TESTS_SECONDS:-200}"       # step budgets: together under 8 minutes
BENCH_SECONDS="${BENCH_SECONDS:-240}"
SUMMARY="$OUTDIR/summary.txt"
: > "$SUMMARY"

# `import salbench` must resolve to this checkout: a folder holding one link named salbench
PYROOT="$(mktemp -d)"
ln -sfn "$ROOT" "$PYROOT/salbench"
export PYTHONPATH="$PYROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

step() {  # step NAME SECONDS COMMAND...: run, tee its log, record its status
  local name="$1" seconds="$2"
  shift 2
  echo "== $name ($(date -u +%H:%M:%S), limit ${seconds}s): $*" | tee -a "$SUMMARY"
  local start=$SECONDS
  (cd "$ROOT" && timeout -s INT -k 20 "$seconds" "$@") 2>&1 | tee "$OUTDIR/$name.log"
  local status=${PIPESTATUS[0]}
  echo "== $name: exit $status after $((SECONDS - start)) s$([[ $status == 124 || $status == 130 ]] && echo ' (timed out)')" \
    | tee -a "$SUMMARY"
  return 0
}

step environment 60 bash -c "nvidia-smi; echo; '$PY' -c '
import platform, torch
print(\"python\", platform.python_version(), \"| torch\", torch.__version__, \"| CUDA\", torch.version.cuda,
      \"| cuDNN\", torch.backends.cudnn.version())
print(\"cuda available:\", torch.cuda.is_available(), \"| devices:\",
      [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
import salbench, captum, pytorch_grad_cam, quantus
print(\"salbench from\", salbench.__file__)
'"

step tests "$TESTS_SECONDS" "$PY" -m pytest -m cuda -q -p no:cacheprovider -rs \
  --junitxml="$OUTDIR/tests.xml" tests

# ResNet-50, 224 px, batch 64 (occlusion window 56 / stride 28: 49 windows; 48 deletion steps:
# a multiple of 3 dividing 3*224*224 for Quantus), 3 timed calls per figure
step benchmark "$BENCH_SECONDS" "$PY" -m benchmarks.run --parts micro --device cuda --model resnet50 \
  --size 224 --batch 64 --repeats 3 --bound-sizes 16,32,64,128,256 --window 56 --stride 28 --n-steps 48 \
  --box-images 16 --results "$OUTDIR/benchmarks.json" --output "$OUTDIR/benchmarks.md"

echo "outputs in $OUTDIR:" | tee -a "$SUMMARY"
ls -la "$OUTDIR" | tee -a "$SUMMARY"

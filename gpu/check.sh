#!/usr/bin/env bash
# make gpu-check: fsx's checks on a lent GPU machine, in under 8 minutes, with no network.
#
# Before, on a machine with the package registry: `make gpu-wheels` (.whl/, the wheels the GPU
# image lacks). On the GPU machine, from the repository root, with .whl carried:
#     OUT=/some/folder bash gpu/check.sh          # or: make gpu-check OUT=/some/folder
# It installs the wheels beside the image's own torch (--target, nothing else touched), then runs,
# each step under its own time limit so that one slow step cannot eat the others':
#   1. the environment (GPU, driver, torch, CUDA)                        -> env.txt
#   2. DDP on 1 GPU through NCCL (torchrun, a short letters pretraining)  -> ddp.log
#   3. a letters pretraining -> eval on CUDA with bf16 autocast (make demo's job: 1000 steps,
#      5 tasks scored after 0, 10 and 50 steps),
#      GPU utilisation sampled by nvidia-smi every 0.5 s meanwhile       -> demo.log, gpu-util.csv
#   4. the tests that need no training on CUDA (pytest -m "not slow", 8 processes on one GPU)
#      and the CUDA-only ones                                            -> tests.log
#   5. make bench on CUDA (fp32 vs bf16, GPU utilisation of pretraining, MAML memory) -> bench.md
# and a summary of every step (status, seconds, the lines that matter) -> summary.md.
# Everything goes to $OUT (at most 8 files: what the device tool brings back).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/gpu-check}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu FAST=1 tries the script's plumbing on a machine with no GPU:
FAST=${FAST:-}          # 30 training steps, 2 tasks of 10 steps, no bench, only test_utilisation.py
DDP_STEPS=60 DEMO=() EVAL=() TESTS=(tests)
[ -n "$FAST" ] && DDP_STEPS=10 DEMO=(train.steps=30) EVAL=(eval.repeats=2 "eval.milestones=[0,10]") TESTS=(tests/test_utilisation.py)
SITE=${SITE:-/tmp/fsx-site}
WORK=${WORK:-/tmp/fsx-gpu-check}  # fsx's runs, MLflow store and data here: not in the repository
mkdir -p "$OUT" "$WORK"
SUMMARY=$OUT/summary.md
START=$SECONDS
echo "# fsx gpu-check, $(date -u '+%Y-%m-%d %H:%M UTC')" > "$SUMMARY"

# step NAME LIMIT LOG COMMAND...: run COMMAND under LIMIT seconds, its output into LOG; one line in the summary
step() {
  local name=$1 limit=$2 log=$3 t0=$SECONDS rc
  shift 3
  timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  local status=passed
  [ $rc = 0 ] || status="FAILED (exit $rc)"
  [ $rc = 124 ] || [ $rc = 137 ] && status="TIMED OUT after ${limit}s"
  echo "- $name: $status in $((SECONDS - t0)) s (log: $(basename "$log"))" >> "$SUMMARY"
  return 0
}

# 0. the carried wheels, beside the image's torch, torchvision, numpy, timm, onnxruntime
if ! ls .whl/*.whl > /dev/null 2>&1; then
  echo "no .whl/ here: run make gpu-wheels on a machine with the package registry, and carry .whl" | tee -a "$SUMMARY" >&2
  exit 2
fi
step "install the $(ls .whl/*.whl | wc -l) carried wheels" 120 "$OUT/env.txt" \
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
# fsx as this checkout has it, whatever fsx wheel .whl holds: the wheel is fsx/ with conf/ as fsx/conf
if ! diff -rq -x __pycache__ -x conf fsx "$SITE/fsx" > /dev/null || ! diff -rq -x __pycache__ conf "$SITE/fsx/conf" > /dev/null; then
  cp -r fsx/. "$SITE/fsx/" && cp -r conf/. "$SITE/fsx/conf/"
  echo "- the fsx wheel in .whl was older than this checkout: its files were replaced by the checkout's" >> "$SUMMARY"
fi
# PYTHONSAFEPATH: no process (tests' subprocesses too) imports the repository's fsx/ in place of
# the installed one, which alone holds fsx.conf
export PYTHONPATH=$SITE PATH=$SITE/bin:$PATH PYTHONSAFEPATH=1 FSX_PROGRESS=plain PYTHONUNBUFFERED=1
FSX=("$PY" -m fsx)

# 1. the environment
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "no nvidia-smi"
  "$PY" -c 'import sys, torch, torchvision, fsx; print("python", sys.version.split()[0], "| torch", torch.__version__, "| torchvision", torchvision.__version__, "| CUDA", torch.version.cuda, "| available", torch.cuda.is_available(), "| bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported(), "| fsx from", fsx.__file__)'
  "$PY" -m pip list 2>/dev/null | grep -i -E "^(torch|torchvision|timm|numpy|mlflow-skinny|hydra-core|pycocotools|onnxruntime) "
} >> "$OUT/env.txt" 2>&1
sed -n '/^python/p' "$OUT/env.txt" >> "$SUMMARY"

cd "$WORK"
# 2. DDP on one GPU through NCCL: the launcher, the process group, rank 0's run and checkpoint
step "DDP, 1 GPU, NCCL (torchrun)" 90 "$OUT/ddp.log" \
  "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m fsx pretrain experiment=demo \
  device=$DEVICE train.steps=$DDP_STEPS mlflow.experiment=gpu-check-ddp
grep -h -E "^fsx pretrain: [0-9]+ process|^pretrained " "$OUT/ddp.log" | head -4 | sed 's/^/    /' >> "$SUMMARY"

# 3. make demo's job on CUDA with bf16 autocast, GPU utilisation sampled meanwhile
{ nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,nounits -lms 500 || echo "no nvidia-smi"; } > "$OUT/gpu-util.csv" 2>&1 &
SAMPLER=$!
step "letters pretraining on CUDA, bf16 autocast (experiment=demo)" 150 "$OUT/demo.log" \
  "${FSX[@]}" pretrain experiment=demo device=$DEVICE amp=true mlflow.experiment=gpu-check "${DEMO[@]}"
kill $SAMPLER 2>/dev/null
"$PY" -c "
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if r and r[0][:1].isdigit()]
busy = [float(r[1]) for r in rows]
if busy:
    print(f'    GPU utilisation during pretraining (nvidia-smi, {len(busy)} samples): mean {sum(busy) / len(busy):.0f}%, median {sorted(busy)[len(busy) // 2]:.0f}%, peak memory {max(float(r[2]) for r in rows):.0f} MiB')
" "$OUT/gpu-util.csv" >> "$SUMMARY" 2>&1
CHECKPOINT=$(sed -n 's|^checkpoint: \(runs:/.*\)|\1|p' "$OUT/demo.log" | tail -n 1)
step "eval on CUDA, bf16 autocast (5 tasks, 0/10/50 steps)" 120 "$OUT/demo.log" \
  "${FSX[@]}" eval experiment=demo device=$DEVICE amp=true "checkpoint=${CHECKPOINT:-latest}" mlflow.experiment=gpu-check "${EVAL[@]}"
{ grep -h "^pretrained " "$OUT/demo.log"; sed -n '/mean ± 95% CI/,/^AP50 speed/p' "$OUT/demo.log"; } | sed 's/^/    /' >> "$SUMMARY"

# 4. the tests: the fast suite on CUDA where a test's device is auto, and the CUDA-only tests
cd "$REPO"
step "tests (pytest -m 'not slow', 8 processes)" 150 "$OUT/tests.log" \
  "$PY" -m pytest -q -p no:cacheprovider -n 8 --dist loadfile -m "not slow" "${TESTS[@]}"
tail -n 3 "$OUT/tests.log" | sed 's/^/    /' >> "$SUMMARY"

# 5. make bench on CUDA, its tables written to bench.md
[ -n "$FAST" ] && { echo "total: $((SECONDS - START)) s (FAST: no bench)" >> "$SUMMARY"; cat "$SUMMARY"; exit 0; }
step "make bench on CUDA (3 repeats)" $((470 - (SECONDS - START) > 60 ? 470 - (SECONDS - START) : 60)) "$OUT/bench.log" \
  "$PY" bench/run.py --repeats 3 --device $DEVICE --out "$OUT/bench.md"
[ -s "$OUT/bench.md" ] || tail -n 20 "$OUT/bench.log" > "$OUT/bench.md"
echo "total: $((SECONDS - START)) s" >> "$SUMMARY"
cat "$SUMMARY"

#!/usr/bin/env bash
# The GPU check in one command (benchmarks/README.md, "On a GPU"): on a machine with one NVIDIA GPU whose
# Python has torch and transformers but no registry access,
#   (a) installs the carried wheels (scripts/build_wheels.sh) into a folder put on PYTHONPATH,
#   (b-d) runs the tiny preset's `snakemake all` with every GPU rule on CUDA and again on CPU, and
#         compares them (benchmarks/gpu_workflow.py: files, shapes, row counts, embeddings, losses,
#         recalls, the device each GPU rule's process used),
#   (e) measures captioning at the paper's model size (benchmarks/captioning.py --size paper) and the
#       paper-config training step at batch 512 (benchmarks/train_step.py: MFU, peak memory),
# writes every JSON, a summary (gpu_check.json) and its own log into $OUT, and exits non-zero if any
# step failed or mismatched. Each step runs under its own time limit, so a slow one cannot starve the
# others; the defaults (T_WORKFLOW + T_CAPTION + T_TRAIN, plus about 20 s) fit a 600 s call.
#
#   bash scripts/gpu_check.sh                   # on the GPU machine
#   bash scripts/gpu_check.sh --cpu-dry-run     # no GPU: both workflow runs on CPU, tiny benchmarks
#   bash scripts/gpu_check.sh --only bench      # (e) alone; --only workflow: (a-d) alone
#
# Environment: OUT (default benchmarks/out/gpu_check), WHEELS (default benchmarks/out/wheels), PYTHON
# (default python3), T_WORKFLOW / T_CAPTION / T_TRAIN (seconds; default 300 / 130 / 140),
# CAPTION_ARGS, TRAIN_ARGS (replace the benchmarks' default options).
set -uo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$REPO/benchmarks/out/gpu_check}
WHEELS=${WHEELS:-$REPO/benchmarks/out/wheels}
PY=${PYTHON:-python3}
DRY=0
ONLY=all
while (( $# )); do
  case $1 in
    --cpu-dry-run) DRY=1 ;;
    --only) ONLY=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ $ONLY == all || $ONLY == workflow || $ONLY == bench ]] || { echo "gpu_check.sh: --only all|workflow|bench" >&2; exit 2; }

mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
TEE_PID=$!
cd "$REPO"
export PYTHONUNBUFFERED=1
WORK=$(mktemp -d /tmp/fb2-gpu-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
declare -A STATUS SECONDS_TAKEN

step() {  # step NAME LIMIT_S COMMAND...: run under a time limit, record its exit status and duration
  local name=$1 limit=$2 t0 rc
  shift 2
  echo "== $name (limit ${limit} s): $*"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  STATUS[$name]=$rc
  SECONDS_TAKEN[$name]=$(( $(date +%s) - t0 ))
  (( rc == 124 )) && echo "== $name: stopped at its time limit (${limit} s)"
  echo "== $name: exit $rc after ${SECONDS_TAKEN[$name]} s"
  return 0
}

# A GPU is required unless this is a dry run: say so at once, not after minutes of CPU work.
if (( ! DRY )) && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check.sh: $PY sees no CUDA device; this check needs a GPU (--cpu-dry-run runs it on CPU)" >&2
  exit 2
fi
"$PY" - <<'EOF'
import torch, transformers
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"python: torch {torch.__version__}, transformers {transformers.__version__}, GPU: {gpu}")
EOF

# (a) The carried wheels, unless their packages are already importable. --target and PYTHONPATH rather
# than a venv: the GPU machine's python3 is itself a venv (/opt/torch/.venv), and a venv made from it
# with --system-site-packages sees the base interpreter's packages, not torch's venv.
if ! "$PY" -c 'import snakemake, open_clip, faiss, krippendorff, jsonschema' 2>/dev/null; then
  if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "gpu_check.sh: snakemake/open_clip/faiss are missing and $WHEELS holds no wheels:" \
      "run scripts/build_wheels.sh where pip works, and carry benchmarks/out/wheels" >&2
    exit 2
  fi
  step install 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$WORK/site" "$WHEELS"/*.whl
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
  if ! "$PY" -c 'import snakemake, open_clip, faiss, krippendorff, jsonschema'; then
    echo "gpu_check.sh: the carried wheels do not import (above)" >&2
    exit 2
  fi
fi

# (b-d) The workflow on CUDA against the workflow on CPU.
if [[ $ONLY != bench ]]; then
  dry_flag=()
  # The dry run compares bf16 with fp32 (both on CPU), so that the comparison meets real differences;
  # bf16 rounding alone moved a loss by 0.061 there, hence the wider loss tolerance.
  (( DRY )) && dry_flag=(--cpu-dry-run --reference-precision fp32 --loss-max-abs-diff 0.1)
  # Its own deadline 20 s inside the step's limit: the comparison and the JSON still happen.
  step workflow "${T_WORKFLOW:-300}" "$PY" benchmarks/gpu_workflow.py "${dry_flag[@]}" --work "$WORK/workflow" \
    --cores "$(( $(nproc) < 16 ? $(nproc) : 16 ))" --timeout "$(( ${T_WORKFLOW:-300} - 20 ))" \
    --out "$OUT/gpu_workflow.json"
  # The runs' logs (small), for a failed or mismatched run.
  tar -czf "$OUT/workflow_logs.tar.gz" -C "$WORK/workflow" gpu/logs gpu/snakemake.log ref/logs ref/snakemake.log \
    2>/dev/null || true
fi

# (e) The benchmarks: captioning at the paper's size, and the paper-config training step at batch 512.
if [[ $ONLY != workflow ]]; then
  if (( DRY )); then
    caption_args=(--size tiny --device cpu --batch-sizes 1,2 --batches 1)
    train_args=(--device cpu --config tiny --batch-size 4 --micro-batch 2 --steps 1)
  else
    caption_args=(--size paper --device cuda --batch-sizes 16,64,128,256 --batches 2)
    # The best setting under 60 GB measured so far (benchmarks/README.md): gradient cache of 256,
    # checkpointing, frozen encoder in bf16, compiled encoder layers.
    train_args=(--device cuda --config paper --batch-size 512 --micro-batch 256 --frozen-bf16 --compile --steps 3)
  fi
  [[ -n ${CAPTION_ARGS:-} ]] && read -r -a caption_args <<<"$CAPTION_ARGS"
  [[ -n ${TRAIN_ARGS:-} ]] && read -r -a train_args <<<"$TRAIN_ARGS"
  # No new batch size after T_CAPTION - 30 s; the JSON is written after each size, so a stop at the
  # limit keeps what was measured.
  step captioning "${T_CAPTION:-130}" "$PY" benchmarks/captioning.py "${caption_args[@]}" \
    --time-budget "$(( ${T_CAPTION:-130} - 30 ))" --out "$OUT/captioning.json"
  step train_step "${T_TRAIN:-140}" "$PY" benchmarks/train_step.py "${train_args[@]}" --out "$OUT/train_step.json"
fi

# The summary: each step's exit status and seconds, and the headline numbers.
failed=0
summary="{"
for name in "${!STATUS[@]}"; do
  summary+="\"$name\": {\"exit\": ${STATUS[$name]}, \"seconds\": ${SECONDS_TAKEN[$name]}},"
  (( STATUS[$name] != 0 )) && failed=1
done
summary="${summary%,}}"
OUT_DIR="$OUT" STEPS="$summary" DRY="$DRY" FAILED="$failed" "$PY" - <<'EOF'
import json, os
from pathlib import Path

out = Path(os.environ["OUT_DIR"])
record = {"mode": "cpu dry run" if os.environ["DRY"] == "1" else "cuda", "steps": json.loads(os.environ["STEPS"])}
def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.exists() else None
if (w := load("gpu_workflow.json")):
    record["workflow"] = {"ok": w["ok"], "failed_checks": [c["check"] for c in w["checks"] if not c["ok"]]}
if (c := load("captioning.json")):
    record["captioning"] = {k: c[k] for k in ("device", "size", "best", "paper_images_per_s", "ratio_to_paper", "meets_target")}
    peaks = [r["peak_gpu_memory_gib"] for r in c["results"] if r.get("peak_gpu_memory_gib") is not None]
    record["captioning"]["peak_gpu_memory_gib"] = max(peaks) if peaks else None
if (t := load("train_step.json")):
    record["train_step"] = {k: t[k] for k in ("device", "config", "batch_size", "micro_batch", "seconds_per_step",
                                               "peak_gpu_memory_gib", "mfu")}
record["ok"] = os.environ["FAILED"] == "0"
(out / "gpu_check.json").write_text(json.dumps(record, indent=2) + "\n")
print(json.dumps(record, indent=2))
EOF
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null  # the log complete before the call returns
exit $failed

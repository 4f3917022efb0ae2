#!/usr/bin/env bash
# Build the wheels that scripts/gpu_check.sh installs on a GPU machine that reaches no package registry:
# the packages the workflow needs that such a machine's Python lacks (Snakemake and its dependencies,
# open_clip, FAISS, krippendorff). Run it where pip reaches the registry; the folder then travels
# with the repository (`carry`), and gpu_check.sh installs it with --no-index --no-deps --target.
#
#   bash scripts/build_wheels.sh                    # into benchmarks/out/wheels (git-ignored)
#   bash scripts/build_wheels.sh /some/folder
#   PYTHON_VERSION=3.11 bash scripts/build_wheels.sh /tmp/w311   # for another Python
#
# The list leaves out what the GPU machine's Python already has (torch, torchvision, transformers,
# tokenizers, safetensors, numpy, pandas, pyarrow, pillow, matplotlib, timm, pyyaml, requests, jinja2,
# packaging, psutil, wrapt, tabulate, tqdm, regex, ...: /work/.library/device/KINDS.md, 2026-11) and
# PuLP (16 MB; only Snakemake's ILP scheduler imports it, and gpu_check runs `--scheduler greedy`).
# Versions are this checkout's .venv's, where it has the package (the versions the tests pass with).
# Exit status 1 if a wheel cannot be had or the folder exceeds MAX_MIB (default 56: the device call
# carries 64 MiB in all, the working tree included).
set -euo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
  exit 0
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${1:-$REPO/benchmarks/out/wheels}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
MAX_MIB=${MAX_MIB:-56}
if [[ -x $REPO/.venv/bin/python ]]; then PY=$REPO/.venv/bin/python; else PY=${PYTHON:-python3}; fi

# What the workflow imports that the GPU machine lacks, and their own needs (Requires-Dist, recursively,
# minus the machine's packages).
PACKAGES=(
  snakemake snakemake-interface-common snakemake-interface-executor-plugins
  snakemake-interface-storage-plugins snakemake-interface-logger-plugins
  snakemake-interface-report-plugins snakemake-interface-scheduler-plugins
  immutables configargparse connection_pool docutils gitpython gitdb smmap humanfriendly
  jsonschema jsonschema-specifications referencing rpds-py nbformat fastjsonschema jupyter-core
  traitlets platformdirs tenacity smart-open throttler yte dpath conda-inject argparse-dataclass
  sqlmodel sqlalchemy greenlet pydantic pydantic-core annotated-types typing-inspection
  open_clip_torch ftfy wcwidth
  faiss-cpu
  krippendorff
)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
  manylinux2014_x86_64 manylinux_2_12_x86_64 manylinux2010_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64)

freeze=$("$PY" -m pip freeze 2>/dev/null || true)
norm() { echo "$1" | tr 'A-Z_.' 'a-z--'; }
pinned() {  # NAME==VERSION as this checkout's .venv has it, else NAME
  local want line
  want=$(norm "$1")
  while IFS= read -r line; do
    [[ $line == *==* ]] || continue
    if [[ $(norm "${line%%==*}") == "$want" ]]; then echo "$1==${line#*==}"; return; fi
  done <<<"$freeze"
  echo "$1"
}

mkdir -p "$DEST"
# One version of each package: `pip install --target` of two versions of one package fails.
rm -f "$DEST"/*.whl
platform_args=()
for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
failed=()
for name in "${PACKAGES[@]}"; do
  spec=$(pinned "$name")
  if "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
      --implementation cp "${platform_args[@]}" -d "$DEST" "$spec" 2>/dev/null; then
    continue
  fi
  # Published as a source archive only (connection_pool): build it here, if it is pure Python.
  tmp=$(mktemp -d)
  if "$PY" -m pip wheel -q --no-deps -w "$tmp" "$spec" 2>/dev/null && compgen -G "$tmp/*-none-any.whl" >/dev/null; then
    mv "$tmp"/*.whl "$DEST"/
  else
    failed+=("$spec")
  fi
  rm -rf "$tmp"
done

total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
ls -1S "$DEST"/*.whl | while read -r w; do printf '%9d KiB  %s\n' $(( $(stat -c %s "$w") / 1024 )) "$(basename "$w")"; done
printf '%d wheels, %.1f MiB in %s (limit %s MiB)\n' "$(ls "$DEST"/*.whl | wc -l)" "$(echo "$total / 1048576" | bc -l)" "$DEST" "$MAX_MIB"
if (( ${#failed[@]} )); then
  echo "build_wheels.sh: no wheel for: ${failed[*]}" >&2
  exit 1
fi
if (( total > MAX_MIB * 1048576 )); then
  echo "build_wheels.sh: the wheels exceed $MAX_MIB MiB; the device call carries 64 MiB in all" >&2
  exit 1
fi

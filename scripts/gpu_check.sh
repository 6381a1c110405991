#!/usr/bin/env bash
# GPU validation kit: prove the GPU paths of jetspec-compile in one command (under 8 minutes on an H200).
#
#   scripts/gpu_check.sh OUTDIR [--dry-run] [--steps a,b] [--skip a,b] [--layers N] [--seq-len S] ...
#
# Runs from a plain checkout with the machine's own python3 (or $PYTHON): the repo goes on PYTHONPATH,
# nothing is installed and nothing is downloaded. Everything it writes lands in OUTDIR (results.json,
# summary.json, summary.md, steps/*.log); compiled packages, the 8B-shaped artifact and the Inductor /
# Triton caches go to a temporary work folder that is removed at the end. --dry-run checks the same
# plumbing on the CPU at tiny shapes. See scripts/gpu_check/__init__.py for the steps.
set -u
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: $0 OUTDIR [--dry-run] [--steps a,b] [--skip a,b] [gpu_check run options]" >&2
  exit 2
fi
OUT=$1
shift
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
export PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1   # never the network
unset TRITON_INTERPRET

# A last-resort wall-clock limit around the kit's own per-step timeouts and time budget.
LIMIT=${GPU_CHECK_LIMIT_S:-560}
case " $* " in *" --dry-run "*) LIMIT=${GPU_CHECK_LIMIT_S:-7200} ;; esac

echo "gpu_check.sh: repo $REPO, python $(command -v ${PY%% *} || echo "$PY"), out $OUT"
if command -v timeout >/dev/null 2>&1; then
  # shellcheck disable=SC2086
  timeout -k 15 "$LIMIT" $PY "$REPO/scripts/gpu_check" run --out "$OUT" "$@"
else
  # shellcheck disable=SC2086
  $PY "$REPO/scripts/gpu_check" run --out "$OUT" "$@"
fi
rc=$?
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
  echo "gpu_check.sh: the kit ran past ${LIMIT}s and was stopped; rebuilding the summary from what was recorded" >&2
  if [ -f "$OUT/results.json" ]; then
    # shellcheck disable=SC2086
    $PY "$REPO/scripts/gpu_check" summarize "$OUT" >/dev/null 2>&1 || true
  fi
fi
exit $rc

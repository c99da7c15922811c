#!/usr/bin/env bash
# One-call GPU check for issue 13 (H100 / H200 machine with PyTorch + Triton + an older transformers, no internet).
#
# Prepare here (a machine with pip), in the repository root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl transformers==5.24.0
#   (add the wheels of any dependency the machine's versions do not satisfy, e.g. huggingface_hub / tokenizers:
#    `unzip -p .whl/transformers-*.whl '*/METADATA' | grep ^Requires-Dist`; and flash-attn / flash-attn-3 wheels
#    built for the machine's torch + CUDA to test those backends.)
# Run there, from the repository root, carrying `.whl`: `bash benchmarks/gpu_check.sh 1B` (tests + 1B, ~4 minutes on
# an H200) and `bash benchmarks/gpu_check.sh 8B` (~5-7 minutes) as two calls (a call may last 10 minutes), or
# `bash benchmarks/gpu_check.sh` for both. The machine needs transformers 5.24.0, regex and pillow 13.0.0 wheels
# (cp312) besides its own packages (2026-11-30).
# It installs the carried wheels, runs the `gpu`-marked tests (bf16 numerics of every available attention backend
# against eager, both towers), benchmarks InternVL2.5-1B and -8B (all layers, bf16) against transformers' port with
# the same weights, and appends rows (device name, command) to benchmarks/RESULTS.md; logs and JSON go to
# ${OUT:-benchmarks/results}.
set -uo pipefail
cd "$(dirname "$0")/.."
PART=${1:-all}  # all | 1B | 8B: one device call holds at most 10 minutes, so `1B` then `8B` in two calls fits more
case "$PART" in all|1B|8B) ;; *) echo "gpu_check: the argument is all, 1B or 8B, not '$PART'" >&2; exit 2 ;; esac
RESULTS_DIR=${OUT:-benchmarks/results}
mkdir -p "$RESULTS_DIR"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_check: installing the carried wheels failed" >&2; exit 1; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
python3 - <<'PY' || exit 1
import sys, torch, transformers
from packaging.version import Version
print(f"torch {torch.__version__}, transformers {transformers.__version__}, CUDA {torch.cuda.is_available()}")
if Version(transformers.__version__) < Version("5.24"):
    sys.exit("gpu_check: transformers >= 5.24 is needed; carry its wheel in .whl (see the header of this script)")
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device")
PY
DEVICE=$(python3 -c "import torch; print(torch.cuda.get_device_name())")
echo "device: $DEVICE"

TESTS_STATUS=0
if [ "$PART" != 8B ]; then
    timeout 120 python3 -m pytest -q -m gpu -rs tests/test_gpu_attention.py 2>&1 | tee "$RESULTS_DIR/gpu_tests.log"
    TESTS_STATUS=${PIPESTATUS[0]}
fi

FILES=()
run_bench() {  # name, seconds, bench_model.py arguments...
    local name=$1 seconds=$2; shift 2
    echo "== bench $name: $*"
    if timeout "$seconds" python3 benchmarks/bench_model.py "$@" --json "$RESULTS_DIR/$name.json" \
            --png "$RESULTS_DIR/$name.png" 2>&1 | grep -v -i warn | tee "$RESULTS_DIR/$name.log"; then
        [ -f "$RESULTS_DIR/$name.json" ] && FILES+=("$RESULTS_DIR/$name.json")
    else
        echo "gpu_check: bench $name failed or timed out" | tee -a "$RESULTS_DIR/$name.log"
    fi
}
if [ "$PART" != 8B ]; then  # 2026-11-30 on an H200: tests 35 s, 1B SDPA with static compile ~150 s, 1B eager ~60 s
    run_bench gpu_1B_bf16_sdpa 240 --shape 1B --dtype bfloat16 --attn sdpa --against upstream --static-compile --repeats 3
    run_bench gpu_1B_bf16_eager 90 --shape 1B --dtype bfloat16 --attn eager --against upstream --repeats 3
    if python3 -c "from transformers.utils import is_flash_attn_2_available as a; raise SystemExit(not a())"; then
        run_bench gpu_1B_bf16_fa2 90 --shape 1B --dtype bfloat16 --attn flash_attention_2 --against upstream --repeats 3
    fi
fi
if [ "$PART" != 1B ]; then  # 8B without static compile ~120 s; each static compile of a 7B LLM adds about a minute
    run_bench gpu_8B_bf16_sdpa 420 --shape 8B --dtype bfloat16 --attn sdpa --against upstream --static-compile --repeats 2
fi

if [ ${#FILES[@]} -gt 0 ]; then
    {
        echo
        echo "### GPU: $DEVICE ($(date -u +%Y-%m-%d), \`bash benchmarks/gpu_check.sh $PART\`; gpu tests exit status $TESTS_STATUS)"
        echo
        python3 benchmarks/results_table.py --header "${FILES[@]}"
    } >> benchmarks/RESULTS.md
    cp benchmarks/RESULTS.md "$RESULTS_DIR/RESULTS.md" 2>/dev/null || true
fi
exit "$TESTS_STATUS"

#!/usr/bin/env bash
# The GPU checks in one go, for a CUDA machine: the attention benchmark, then the `gpu` tests.
#
#   bench/gpu_checks.sh OUT_DIR [BENCH_SECONDS] [TEST_SECONDS]     (BENCH_SECONDS 0: tests only)
#
# Writes OUT_DIR/attention_gpu.{json,csv} (rewritten after every case, so a run cut short
# keeps what it measured), bench.log, gpu_tests.log, gpu_tests.xml and gpu_env.txt.
# Runs from a source checkout without installing it: where `fastft.kernels` is not
# importable, fastft/kernels is linked to the top-level kernels/ folder (as the wheel
# installs it). Each phase has its own time limit; the exit status is the tests'.
set -u
out=${1:?usage: bench/gpu_checks.sh OUT_DIR [BENCH_SECONDS] [TEST_SECONDS]}
bench_s=${2:-240}
test_s=${3:-200}
py=${PYTHON:-python3}
mkdir -p "$out"
cd "$(dirname "$0")/.." || exit 2
unset TRITON_INTERPRET
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$py" -c "import fastft.kernels" 2>/dev/null; then
    ln -sfn ../kernels fastft/kernels
fi

{
    date -u
    nvidia-smi
    "$py" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name(0))"
    echo "cpus $(nproc)"
} >"$out/gpu_env.txt" 2>&1
tail -n 2 "$out/gpu_env.txt"

workers=$(($(nproc) > 2 ? $(nproc) - 2 : 1))
if [ "$bench_s" -gt 0 ]; then  # 0: tests only
    timeout "$bench_s" "$py" bench/bench_attention_gpu.py --out-dir "$out" --dtypes fp16 bf16 \
        --seqs 512 1024 2048 4096 --rounds 15 --precompile-workers "$workers" 2>&1 | tee "$out/bench.log"
    echo "bench exit ${PIPESTATUS[0]}"
fi

xdist=()
if "$py" -c "import xdist" 2>/dev/null; then xdist=(-n "$workers"); fi
timeout "$test_s" "$py" -m pytest -m gpu "${xdist[@]}" -q -p no:cacheprovider --durations=15 -rfE \
    tests/test_attention_triton.py tests/test_attention.py --junitxml="$out/gpu_tests.xml" >"$out/gpu_tests.log" 2>&1
rc=$?
tail -n 25 "$out/gpu_tests.log"
echo "tests exit $rc"
exit $rc

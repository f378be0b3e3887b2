#!/usr/bin/env bash
# The GPU checks in one call: the gpu-marked tests, then the rasterizer, fitting and network benchmarks on the
# accelerator. For a machine with a GPU and a Python that has torch, timm, safetensors, OpenCV and pytest (the
# project's .venv, or a GPU image's python3); no Blender, no mediapipe and no network needed. The steps' limits
# add up to 9 minutes; expect about 4.
#
#     bash bench/device_check.sh              # logs in $OUT, else ./device-check
#     PYTHON=.venv/bin/python DEVICE=cpu bash bench/device_check.sh   # dry run of the same steps on the CPU
#
# Each step has its own time limit and a failing step does not stop the next; the exit status counts failures.
set -u -o pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
logs=${OUT:-device-check}
mkdir -p "$logs"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
failed=0

step() {  # step NAME SECONDS COMMAND...: run, tee into $logs/NAME.log, count a failure
    local name=$1 limit=$2
    shift 2
    echo "=== $name"
    timeout "$limit" "$@" 2>&1 | tee "$logs/$name.log"
    local rc=$?
    [ "$rc" -eq 0 ] || { echo "=== $name failed (exit $rc)"; failed=$((failed + 1)); }
}

threads=$(nproc)
step environment 30 "$py" -c "import sys, numpy, torch, timm
print('python', sys.version.split()[0], 'numpy', numpy.__version__, 'torch', torch.__version__, 'timm', timm.__version__)
print('cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
# (On the CPU the gpu-marked tests skip: a dry run checks that they are collected.)
step gpu-tests 150 "$py" -m pytest -p no:cacheprovider -q -rs -m gpu tests/core/test_accelerator.py tests/core/test_fit_refine.py
step bench-render 60 "$py" bench/bench_render.py --device "$device" --iters 50 --threads "$threads"
step bench-fit 150 "$py" bench/bench_fit.py --device "$device" --threads "$threads" --presets fast balanced --probe-steps 20
step bench-fit-nondeterministic 60 "$py" bench/bench_fit.py --device "$device" --threads "$threads" --presets balanced \
    --probe-steps 20 --no-whole --nondeterministic
step bench-network 90 "$py" bench/bench_network.py --device "$device" --reps 3 --skip-load
echo "=== $failed step(s) failed; logs in $logs"
exit "$failed"

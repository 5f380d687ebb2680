#!/usr/bin/env bash
# The GPU benchmark as one prepared run, for a session that is lent a device machine (the `device`
# tool): pathway, gradient and integrated gradients per method, maps/s per GPU on the small net and
# at ResNet-50 and VGG-16 224 px (benchmarks/bench_attribution.py), with the GPU's name and driver.
#
# The device machine has CUDA PyTorch, torchvision, numpy and matplotlib in its python3 (Python 3.12
# and torch 2.11 when last seen there; the project pins torch 2.13 on CPU, so the header records
# the versions), and reaches no network. The benchmark needs neither Ray nor the storage packages. Captum (integrated gradients) travels as a wheel. Prepare it here, once:
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl captum==0.9.0      # .whl/ is git-ignored
# Then make one device call: command `bash benchmarks/gpu.sh`, carry [".whl"], timeout_s 600.
# What it prints also lands in $OUT (gpu.txt, attribution.log, attribution.json); copy the figures
# into benchmarks/RESULTS.md with the GPU they ran on.
#
# Ray does not travel (its wheel is over the device tool's 64 MiB), so the whole job's images/s per
# GPU (benchmarks/bench_job.py) needs a GPU node of a Ray cluster of your own.
#
# Settings: BENCH_DEVICE (cuda), BENCH_MODELS (small,resnet50,vgg16), BENCH_SECONDS (480: the models
# run in that order and each prints as it ends, so a run cut short keeps the ones before).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
{
    date -u +"%Y-%m-%d %H:%M:%S UTC"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
    "$python" -c "import importlib.metadata as m, torch; print('torch', torch.__version__, 'torchvision',
m.version('torchvision'), 'cuda', torch.version.cuda, 'device',
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"
} 2>&1 | tee "$out/gpu.txt"
timeout "${BENCH_SECONDS:-480}" "$python" benchmarks/bench_attribution.py --device "${BENCH_DEVICE:-cuda}" \
    --models "${BENCH_MODELS:-small,resnet50,vgg16}" --json "$out/attribution.json" 2>&1 | tee "$out/attribution.log"

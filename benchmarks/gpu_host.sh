#!/usr/bin/env bash
# The figures that need a GPU host (one H100/H200 node), in one short run: `bash benchmarks/gpu_host.sh OUT`.
# Each step has its own time limit, so one that hangs leaves the others' figures. Python: the host's own
# (torch, timm, transformers, numba, pyarrow there); kornia comes from wheels in .whl/ when present.
set -u
out=${1:-/tmp/gpu_host}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
{ nvidia-smi -L; nproc; python3 -c "import torch, numpy, numba; print(torch.__version__, numpy.__version__, numba.__version__)"; } \
    2>&1 | tee "$out/host.txt"
timeout 150 python3 benchmarks/scale.py --no-issue-row --sizes 1000000x10000 9000000x10000 --repeats 3 \
    --json "$out/scale.json" 2>&1 | tee "$out/scale.txt"
timeout 80 python3 benchmarks/cache_build.py --images 8000 --repeats 1 2>&1 | tee "$out/cache_build.txt"
timeout 240 python3 benchmarks/gpu_throughput.py --no-compile 2>&1 | tee "$out/gpu_throughput.txt"
timeout 60 python3 benchmarks/augment_kornia.py --device cuda --repeats 5 2>&1 | tee "$out/augment.txt"

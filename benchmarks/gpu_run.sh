#!/usr/bin/env bash
# The GPU checks of mlic in one prepared run (issue 29), <= 8 minutes on one H100/H200:
#
#     bash benchmarks/gpu_run.sh OUT                      # on the GPU machine
#     bash benchmarks/gpu_run.sh OUT --device cpu --tiny  # the same steps on a CPU, tiny (tests/test_gpu_run.py)
#
# Steps, most valuable first, each under its own time limit so one that hangs leaves the others' figures:
#   (a) sync-debug: a window of real `fit` steps under torch.cuda.set_sync_debug_mode("error")  -> sync_debug.txt
#   (b) the report's ViT through the real CLI, compiled: SIGTERM mid-epoch, resumed, evaluated and predicted,
#       compared with an uninterrupted run (benchmarks/gpu_resume.py states the tolerances)    -> resume.txt
#   (c) throughput: a bare loop per row, fit beside it for the ViT rows, printed as each finishes -> throughput.txt
#       (+ throughput.jsonl, profiles.txt: the top kernels per row)
# Six files in OUT (the device tool brings back at most 8). The inductor cache is shared by the steps. The limits
# (70 + 240 + 170 s) cut step (c) short where compiles run long: rows print as they finish, most valuable first.
# Not covered: a sync-debug window over compiled steps (step (a) runs eager; a compiled window costs a cold compile).
# On the GPU machine python3 is the host's (Python 3.12, torch 2.11, accelerate, timm, transformers,
# matplotlib, numba); what it lacks comes as wheels in .whl/ (carry it):
#     pip download --no-deps -d .whl iterative-stratification      # here, once; then run(carry=[".whl"])
set -u
out=${1:?usage: gpu_run.sh OUT [--device cpu] [--tiny]}
shift
device=cuda tiny=0
while [ $# -gt 0 ]; do
    case $1 in
        --device) device=$2; shift 2 ;;
        --tiny) tiny=1; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
python=${PYTHON:-python3}
scratch=$(mktemp -d /tmp/mlic-gpu-run.XXXXXX)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MLIC_CACHE=$scratch/cache
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$scratch/inductor} HF_HUB_OFFLINE=1
if ls .whl/*.whl >/dev/null 2>&1 && ! "$python" -c "import iterstrat" 2>/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$scratch/site" .whl/*.whl \
        && export PYTHONPATH=$PYTHONPATH:$scratch/site
fi
if [ $tiny = 1 ]; then  # the suite's CPU run: the small CNN at 32 px, aot_eager (no C++ compile)
    model=cnn size=32 backend=aot_eager
    sync_args=(--model cnn --batch 8 --image-size 32 --steps 12 --window 3 10)
    resume_args=(--model cnn --steps 6 --batch 16 --image-size 32 --demo-images 300)
    rows=(cnn:eager:no cnn:compiled:no)
    tp_args=(--batch 16 --steps 3 --windows 2 --warmup 2 --fit-steps 4 --demo-images 300 --workers 0)
    limits=(120 240 240)
else
    model=vit size=224 backend=inductor
    sync_args=(--model vit --batch 64 --steps 40 --window 10 30)
    resume_args=(--model vit --steps 30 --batch 128 --demo-images 1000)
    # fit beside the bare loop for the two ViT rows; the others bare only (each fit compiles again and checkpoints)
    rows=(vit:eager:bf16 vit:compiled:bf16 resnet152:compiled:bf16 resnet152:compiled:fp16 resnet152:eager:bf16
          densenet161:compiled:bf16 timm/vit_base_patch16_224:compiled:bf16)
    tp_args=(--batch 128 --fit-rows 2 --fit-steps 20 --demo-images 1000)
    limits=(70 240 170)
fi
{ nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"; nproc; git rev-parse --short HEAD 2>/dev/null
  "$python" -c "import sys, torch, accelerate, timm, transformers; print(sys.version.split()[0], 'torch', torch.__version__,
'accelerate', accelerate.__version__, 'timm', timm.__version__, 'transformers', transformers.__version__)"; } \
    2>&1 | tee "$out/host.txt"
status=0
timeout "${limits[0]}" "$python" benchmarks/sync_debug.py --device "$device" "${sync_args[@]}" \
    >"$out/sync_debug.txt" 2>&1 || status=1
tail -n 3 "$out/sync_debug.txt"
timeout "${limits[1]}" "$python" benchmarks/gpu_resume.py "$scratch/resume" --device "$device" \
    --compile-backend "$backend" "${resume_args[@]}" 2>&1 | tee "$out/resume.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
timeout "${limits[2]}" "$python" benchmarks/gpu_throughput.py --device "$device" --rows "${rows[@]}" \
    --image-size "$size" --compile-backend "$backend" --json "$out/throughput.jsonl" --profile "$out/profiles.txt" \
    "${tp_args[@]}" 2>&1 | grep -v "^USDT\|^ERROR:.*gpuGetDeviceCount" | tee "$out/throughput.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
rm -rf "$scratch"
echo "gpu_run: $([ $status = 0 ] && echo 'every step passed' || echo 'a step failed or ran out of time') ($model, $device)"
exit $status

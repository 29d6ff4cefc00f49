#!/usr/bin/env bash
# The GPU checks and benchmarks in one go, for a lent device machine (see BENCHMARKS.md).
#   bash benchmarks/gpu_session.sh tests|memory|pipeline|features|extract|foundation [OUTDIR]
# The machine's own python3 (its torch/torchvision); packages it lacks come from .whl/ (pip download
# as in the device README). Each stage writes its JSON lines / log to OUTDIR (default ./gpu-out).
set -uo pipefail
stage=$1; out=${2:-gpu-out}; mkdir -p "$out"
if [ -d .whl ] && [ ! -d /tmp/site/zarr ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:${PYTHONPATH:-} PYTHONUNBUFFERED=1
export HAR_HOME=/tmp/har-home
py=python3
case $stage in
  tests)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
    $py -c 'import torch, torchvision, av, zarr, dask; print(torch.__version__, torchvision.__version__, av.__version__, zarr.__version__, dask.__version__)' | tee -a "$out/gpu.txt"
    $py -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/tests.log" ;;
  memory)
    $py benchmarks/e2e_memory.py --device cuda --steps 10 2>&1 | tee "$out/memory.jsonl"
    $py benchmarks/e2e_memory.py --device cuda --steps 10 --memory-format contiguous \
        --models r2plus1d_18,r3d_18,mc3_18,c3d,i3d,nonlocal,convlstm 2>&1 | tee "$out/memory_contiguous.jsonl" ;;
  pipeline)
    # 300 videos: batches of 30 and 10 divide an epoch, so no ragged last batch makes cuDNN re-tune
    # inside the short timed window (a real epoch has hundreds of steps and one ragged batch)
    for b in 30 10; do
      $py benchmarks/e2e_bench.py --device cuda --groups 25 --workers 8 --batch-size $b --epochs 3 --skip-opencv \
          --model-batch $b --model-steps $((1800 / b)) 2>&1 | tail -1 | tee -a "$out/pipeline.jsonl"
    done ;;
  extract)
    # CPU only: worker scaling on the machine's 16 cores (the 2-vCPU VM cannot measure it)
    # GOPS="12" or "250" runs one keyframe interval (each fits one 10-minute device call)
    $py benchmarks/extract_bench.py --work /tmp/har-bench --workers 1 2 4 8 --long-minutes 0 \
        --gops ${GOPS:-12 250} 2>&1 | grep --line-buffered '^{' | tee -a "$out/extract.jsonl" ;;
  foundation)
    # VideoMAE / V-JEPA 2 / TimeSformer (needs transformers in .whl/): features and fine-tuning clips/s, bf16,
    # at their base configurations (V-JEPA 2 at its 64 frames here), beside ResNet-18 and R(2+1)D-18
    $py benchmarks/video_foundation.py --device cuda --repeat 5 --base-batch 4 --base-frames-vjepa2 64 \
        --skip-base-finetune 2>&1 | tee "$out/foundation.json" ;;
  features)
    $py benchmarks/features_bench.py --device cuda --backbone resnet152 --videos 80 --frames 16 --size 224 \
        --batch-size 256 2>&1 | tee "$out/features.jsonl" ;;
esac

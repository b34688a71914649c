#!/usr/bin/env bash
# One prepared GPU check (compile, bf16, tokens/s, MFU, fused vs loop). Run on a CUDA machine from the
# repo root; everything is also printed, and a copy goes to ${OUT:-gpu_check}/. ~5 minutes on one H100/H200.
set -uo pipefail
out=${OUT:-gpu_check}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-$(command -v python3 || command -v python)}   # some CUDA images have python3 only
# the bundled corpus needs the text packages (kolibri alone is 350 MB); on a node without them, copy a
# prepared data_cache/18-v8192/ here first (python corpora/prepare.py --langs 18 elsewhere): it is reused as it is
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
echo "== 1. MoE layer fused vs loop, and training steps dense vs MoE: eager bf16, then compiled bf16"
"$py" bench.py --device cuda --dtype bfloat16 --tokens 16384 --batch_size 32
"$py" bench.py --device cuda --dtype bfloat16 --tokens 16384 --batch_size 32 --compile
echo "== 2. the whole pipeline at the gpu preset (bf16 autocast, torch.compile, fused AdamW, MFU in the log)"
# any graph break would show here (the CPU tests check there are none); "Recompiling" lines are
# expected only where a stage brings a new model structure (dense, group-routed, learned-routed MoE)
TORCH_LOGS=graph_breaks,recompiles "$py" train.py --langs 18 --preset gpu --out "$out/run" 2>&1 | tr '\r' '\n' | grep -v "it/s\]$"
} 2>&1 | tee "$out/gpu_check.log"

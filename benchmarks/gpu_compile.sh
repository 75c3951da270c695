#!/usr/bin/env bash
# torch.compile probe on the GPU machine (see benchmarks/compile_probe.py): each model trained for
# its default epochs with compile on (cold cache, then warm), then off; then the stem probe. Output in $OUT.
source "$(dirname "$0")/gpu_setup.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -m cifar_pipeline.stages.download
probe() { timeout 240 python3 benchmarks/compile_probe.py "$@" > "$OUT/probe.log" 2>&1; grep -E '^\{' "$OUT/probe.log" || tail -5 "$OUT/probe.log"; }
for compile in 1 1 0; do
  for m in cnn resnet34 resnet18; do probe $m --compile $compile | tee -a "$OUT/compile.jsonl"; done
done
du -sh state/torch_compile | tee -a "$OUT/compile.jsonl"
python3 benchmarks/stem_probe.py | tee "$OUT/stem.jsonl"

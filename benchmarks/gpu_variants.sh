#!/usr/bin/env bash
# Runtime-default measurements on the GPU machine (see benchmarks/variants.py); output in $OUT.
source "$(dirname "$0")/gpu_setup.sh"
python3 -m cifar_pipeline.stages.download
for model in resnet34 cnn resnet18; do
  for bench in 1 0; do
    timeout 150 python3 benchmarks/variants.py $model --cudnn-benchmark $bench 2>&1 | grep -v Warning | tee -a "$OUT/variants.jsonl"
  done
done

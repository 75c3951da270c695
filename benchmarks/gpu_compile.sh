#!/usr/bin/env bash
# torch.compile probe on the GPU machine (see benchmarks/compile_probe.py); output in $OUT.
source "$(dirname "$0")/gpu_setup.sh"
python3 -m cifar_pipeline.stages.download
probe() { timeout 150 python3 benchmarks/compile_probe.py "$@" 2>&1 | grep -E '^\{|Error' | tail -2 | tee -a "$OUT/compile.jsonl"; }
probe resnet34 --weights-channels-last 0
probe resnet34 --weights-channels-last 0
probe resnet18 --weights-channels-last 1
probe resnet18 --weights-channels-last 1
probe cnn --weights-channels-last 1
probe cnn --weights-channels-last 1
probe resnet18 --weights-channels-last 0

#!/usr/bin/env bash
# The measured GPU run: the full default pipeline timed per stage, then the throughput benchmark.
# Optional: WARM_COMPILE=1 (fill torch.compile's cache first, as any earlier run would have),
# PROFILE=1 (top kernels per step), SEEDS="1 2" (ResNet-34 accuracy for other seeds).
source "$(dirname "$0")/gpu_setup.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
[ -d .git ] || { git init -q && git add -A && git -c user.email=gpu@run -c user.name=gpu commit -qm "gpu run"; }

echo "TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-unset (state/torch_compile)}" | tee -a "$OUT/gpu.txt"
if [ "${WARM_COMPILE:-0}" = 1 ]; then
  python3 -m cifar_pipeline.stages.download
  for m in cnn resnet34 resnet18; do
    python3 benchmarks/compile_probe.py $m --compile 1 --epochs 1 2>&1 | grep -E '^\{|Error' | tee -a "$OUT/warm_compile.jsonl"
  done
  du -sh state/torch_compile 2>&1 | tee -a "$OUT/warm_compile.jsonl"
fi

stages="download train_cnn train_resnet34 finetune_resnet18 evaluate@cnn evaluate@resnet34 evaluate@resnet18 compare"
: > "$OUT/stage_seconds.txt"
if [ "${SKIP_REPRO:-0}" != 1 ]; then
  for s in $stages; do
    start=$(date +%s.%N)
    dvc repro -s "$s" 2>&1 | tee -a "$OUT/repro.log" | grep -E "epoch|error|Error|accuracy|logged" || true
    end=$(date +%s.%N)
    echo "$s $(python3 -c "print(round($end - $start, 1))")" | tee -a "$OUT/stage_seconds.txt"
  done
  dvc repro 2>&1 | tail -1 | tee -a "$OUT/repro.log"
  tar czf "$OUT/reports.tar.gz" reports dvc.lock
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  [ -f data/cifar10.npz ] || python3 -m cifar_pipeline.stages.download
  python3 benchmarks/throughput.py --out "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.log"
fi
if [ "${PROFILE:-0}" = 1 ]; then
  for m in resnet18 resnet34; do python3 benchmarks/profile_step.py $m 2>&1 | tee -a "$OUT/profile.txt"; done
fi
if [ -n "${SEEDS:-}" ]; then  # noise check: ResNet-34 test accuracy for other seeds
  for seed in $SEEDS; do
    python3 -c "import yaml; p=yaml.safe_load(open('params.yaml')); p['seed']=$seed; yaml.safe_dump(p, open('params_seed.yaml','w'), sort_keys=False)"
    python3 -m cifar_pipeline.stages.train resnet34 --params params_seed.yaml 2>&1 | grep -E "best|error" | tee -a "$OUT/seeds.log"
    python3 -m cifar_pipeline.stages.evaluate resnet34 --params params_seed.yaml 2>&1 | sed "s/^/seed $seed: /" | tee -a "$OUT/seeds.log"
  done
fi

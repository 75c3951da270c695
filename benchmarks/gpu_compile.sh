#!/usr/bin/env bash
# torch.compile probe on the GPU machine (see benchmarks/compile_probe.py); output in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks
python3 .gpu/build_archive.py --src .gpu/cifar10-jpeg.tar.xz --out data/cifar-10-python.tar.gz >/dev/null || exit 1
python3 - <<'PY'
import yaml
p = yaml.safe_load(open("params.yaml"))
p["data"]["md5"] = "dfada9eb8f08b61978f1a90638d287cf"
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
PY
python3 -m cifar_pipeline.stages.download
probe() { timeout 150 python3 benchmarks/compile_probe.py "$@" 2>&1 | grep -E '^\{|Error' | tail -2 | tee -a "$OUT/compile.jsonl"; }
probe resnet34 --weights-channels-last 0
probe resnet34 --weights-channels-last 0
probe resnet18 --weights-channels-last 1
probe resnet18 --weights-channels-last 1
probe cnn --weights-channels-last 1
probe cnn --weights-channels-last 1
probe resnet18 --weights-channels-last 0

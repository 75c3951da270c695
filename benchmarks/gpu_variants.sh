#!/usr/bin/env bash
# Runtime-default measurements on the GPU machine (see benchmarks/variants.py); output in $OUT.
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
for model in resnet34 cnn resnet18; do
  for bench in 1 0; do
    extra=""; [ "$bench" = 1 ] && [ "$model" != resnet18 ] && extra="--compile"
    timeout 150 python3 benchmarks/variants.py $model --cudnn-benchmark $bench $extra 2>&1 | grep -v Warning | tee -a "$OUT/variants.jsonl"
  done
done

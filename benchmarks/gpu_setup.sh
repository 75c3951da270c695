# Sourced by the gpu_*.sh scripts on the lent GPU machine, from a copy of the checkout that carries
# .gpu/ (cifar10-jpeg.tar.xz and build_archive.py) and .whl/ (wheels for dvc and mlflow).
# Builds the JPEG copy of CIFAR-10 in the official layout and sets the only params that differ from
# params.yaml there: data.md5 (that copy's md5) and resnet18.weights: none (no ImageNet weights).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export DVC_NO_ANALYTICS=1 PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null || exit 1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PATH=/tmp/site/bin:$PATH
python3 .gpu/build_archive.py --src .gpu/cifar10-jpeg.tar.xz --out data/cifar-10-python.tar.gz || exit 1
python3 - <<'PY'
import yaml
p = yaml.safe_load(open("params.yaml"))
p["data"]["md5"] = "dfada9eb8f08b61978f1a90638d287cf"
p["resnet18"]["weights"] = "none"
p["runtime"]["progress"] = False
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
PY

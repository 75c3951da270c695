#!/usr/bin/env bash
# How long `import mlflow.pytorch` takes on the GPU image, which has pytorch_lightning installed,
# with and without hiding pytorch_lightning from it. (The pipeline no longer imports mlflow.pytorch: it logs a
# pyfunc model from code, see registry.py; this probe is the record behind docs/benchmarks.md.)
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD/src PATH=/tmp/site/bin:$PATH MLFLOW_DISABLE_TELEMETRY=true
python3 -c "import pytorch_lightning, torchmetrics, transformers; print('lightning', pytorch_lightning.__version__, 'torchmetrics', torchmetrics.__version__, 'transformers', transformers.__version__)"
for rep in 1 2 3; do for block in 0 1; do
python3 - $block <<'PY'
import sys, time
import torch, mlflow
block = sys.argv[1] == "1"
if block:
    sys.modules["pytorch_lightning"] = None
t = time.perf_counter()
import mlflow.pytorch
print(f"block_lightning={int(block)} import mlflow.pytorch {time.perf_counter() - t:.2f} s, matplotlib imported: {'matplotlib' in sys.modules}")
PY
done; done

#!/usr/bin/env bash
# Where a training stage's wall time goes outside training: cProfile of `train cnn` for one epoch,
# with compile on (cold cache) and off. Output in $OUT.
source "$(dirname "$0")/gpu_setup.sh"
python3 -m cifar_pipeline.stages.download
for compile in true false; do
  python3 - "$compile" <<'PY'
import sys, yaml
p = yaml.safe_load(open("params.yaml"))
p["cnn"]["epochs"] = 1
p["runtime"]["compile"] = sys.argv[1] == "true"
yaml.safe_dump(p, open("params_profile.yaml", "w"), sort_keys=False)
PY
  start=$(date +%s.%N)
  python3 -m cProfile -o "$OUT/stage-compile-$compile.prof" -m cifar_pipeline.stages.train cnn --params params_profile.yaml
  echo "compile=$compile wall $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s"
  python3 -c "
import pstats; s = pstats.Stats('$OUT/stage-compile-$compile.prof'); s.sort_stats('cumulative').print_stats(45)" \
    | grep -v "^$" | cut -c1-180 > "$OUT/stage-compile-$compile.txt"
done

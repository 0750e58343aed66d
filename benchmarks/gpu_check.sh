#!/usr/bin/env bash
# GPU check for sessions that have a GPU (< 5 minutes): the GPU-only tests, then training throughput of
# gerbil vs transformers' GPTJForCausalLM at 6.7m, 32m and 77m (seq 2048, micro-batch 16, bf16 where
# supported). Run from anywhere inside the repo with the package installed:
#     bash benchmarks/gpu_check.sh            # PYTHON=/path/to/python to pick an interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
"$PY" - <<'PYEOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible to torch")
p = torch.cuda.get_device_properties(0)
print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")
PYEOF
echo "== GPU tests"
timeout 120 "$PY" -m pytest -q -m gpu tests -p no:cacheprovider
echo "== training throughput (tokens/s; ratio vs transformers)"
for size in 6.7m 32m 77m; do
  timeout 60 "$PY" benchmarks/train_throughput.py --size "$size" --steps 10 --warmup 3
done

#!/usr/bin/env bash
# The one command for the GPU machine (issue 14). The machine has torch with CUDA but an older
# transformers than this project needs and no internet, so the wheel(s) carried in .whl/ are unpacked
# into /tmp/site, which goes first on PYTHONPATH and shadows the machine's own transformers. Results,
# profiles and the log go to $OUT. The wheels, on a machine with internet (Python 3.12 target):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl transformers==5.24.0
#
#   bash benchmarks/run_gpu.sh [extra bench_gpu.py flags]      (TIME_BUDGET_S=450 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/bench_gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

ls .whl/*.whl >/dev/null  # fails loudly if the wheels were not carried
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || python3 -c "import glob, zipfile; [zipfile.ZipFile(w).extractall('/tmp/site') for w in glob.glob('.whl/*.whl')]"
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi || true
python3 -c "import torch, transformers, huggingface_hub; print('torch', torch.__version__, '| transformers', \
transformers.__version__, transformers.__file__, '| huggingface_hub', huggingface_hub.__version__, '| cuda', \
torch.cuda.is_available())"

python3 benchmarks/bench_gpu.py --device cuda --output_dir "$OUT" --time_budget_s "${TIME_BUDGET_S:-450}" "$@" \
  2>&1 | tee "$OUT/log.txt"

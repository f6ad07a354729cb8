#!/usr/bin/env bash
# The GPU check in one command, from any folder: bench/gpu_check.py (its docstring says what it measures) with
# $PYTHON, else the checkout's own environment where there is one (.venv), else the machine's python3 (a GPU
# machine's, with PyTorch). Arguments go to the script: --prepare (here, once: the proteins), --dry (CPU, tiny sizes).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then
    python=.venv/bin/python
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
BACFLOW_GPU_CHECK_COMMAND="bash bench/gpu_check.sh${*:+ $*}" exec "$python" bench/gpu_check.py "$@"

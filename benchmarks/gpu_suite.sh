#!/usr/bin/env bash
# The GPU suite (benchmarks/gpu_suite.py): throughput of ResNet-18 at 32 px and ResNet-50 at 224 px
# (model-bound, selfsup, standard pipeline), GPU JPEG decode, BYOL on Fashion-MNIST for a fixed wall
# budget then the linear probe; one JSON, in under 9 minutes on one H100/H200, without network.
#
#   benchmarks/gpu_suite.sh FASHION_MNIST_DIR [OUT_JSON] [more gpu_suite.py options]
#   benchmarks/gpu_suite.sh --smoke [OUT_JSON]        # the CPU dry run (seconds)
#
# FASHION_MNIST_DIR holds the four idx files (train-images-idx3-ubyte.gz, ...: 30 MB, e.g. a copy of
# /usr/share/datasets/fashion-mnist carried with the repository). selfsup is imported from src/, so
# the machine needs only the dependencies (torch, torchvision, numpy, scikit-learn, pyyaml, tqdm,
# pillow, matplotlib, tensorboard, threadpoolctl); the script says which are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${PYTHON:-}" ]; then  # the repository's .venv when there is one, else python3 (set PYTHON to choose)
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

missing=$("$PYTHON" - <<'EOF'
import importlib.util
mods = ["torch", "torchvision", "numpy", "sklearn", "yaml", "tqdm", "PIL", "matplotlib", "tensorboard",
        "threadpoolctl"]
print(" ".join(m for m in mods if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
    echo "gpu_suite: missing Python modules: $missing (install them; the suite needs no network itself)" >&2
    exit 3
fi

if [ "${1:-}" = "--smoke" ]; then
    exec "$PYTHON" benchmarks/gpu_suite.py --smoke --out "${2:-gpu_suite_smoke.json}" "${@:3}"
fi
if [ $# -lt 1 ]; then
    echo "usage: benchmarks/gpu_suite.sh FASHION_MNIST_DIR [OUT_JSON] [gpu_suite.py options] | --smoke [OUT_JSON]" >&2
    exit 2
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, '| cuda:', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
exec "$PYTHON" benchmarks/gpu_suite.py --fashion-mnist "$1" --out "${2:-gpu_suite.json}" "${@:3}"

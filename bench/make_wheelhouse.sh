#!/usr/bin/env bash
# The wheels a fresh nvidia-h200 device machine lacks for analyses/gpu_check.sh, fetched here into .whl/ (git-ignored
# through .git/info/exclude; it travels with `carry: [".whl"]`, 64 MiB a call with the working tree):
#   bash bench/make_wheelhouse.sh            # fetch and check
# The device has Python 3.12 with torch, transformers, numpy, scipy, numba, networkx, pandas, pyarrow, ... (the list
# is bench/h200_packages.txt, from /work/.library/device/KINDS.md). What it lacks: featgraph's transformer-lens,
# datasets, igraph and leidenalg; the peers SAELens (+ wandb, which it imports), sparsify and dictionary_learning
# (+ nnsight 0.3, which it imports). Versions are those featgraph's .venv and the peer venvs run here.
# Each wheel is fetched with --no-deps; bench/check_wheelhouse.py then checks that every requirement is on the device
# or in the house, except those named in IGNORE (requirements that the imports used here never load).
# dictionary_learning's crosscoder commit is the same package name as PyPI's 0.1.0, so its wheel goes to .whl/xc/
# and gpu_check.sh installs it into a separate folder.
set -euo pipefail
cd "$(dirname "$0")/.."
W=.whl
DL_XC_COMMIT=12e84279943aac935a5826c5743a2d48e3f161cf
DL_XC_SRC=${DL_XC_SRC:-/work/.mirror/saprmarks+dictionary_learning/repo}
PY=${PY:-.venv/bin/python}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf "$W"; mkdir -p "$W/xc"
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64)
WHEELS=(
  # featgraph (pyproject dependencies the device lacks)
  transformer-lens==3.9.0 better-abc==0.0.3 fancy-einsum==0.0.3 beartype==0.23.1 typeguard==4.6.1
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 igraph==1.0.0 texttable==1.7.2 leidenalg==0.12.0
  platformdirs==4.14.9
  # SAELens and what `import sae_lens` loads
  sae-lens==6.54.12 simple-parsing==0.1.9 docstring-parser==0.18.0 pydantic==2.14.4 pydantic-core==2.50.5
  annotated-types==0.8.0 typing-inspection==0.4.5 wandb==0.31.0 cwevals==0.0.1b1 distro==1.9.0 sniffio==1.3.1
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2
  opentelemetry-exporter-otlp-proto-http==1.45.2 opentelemetry-exporter-otlp-proto-common==1.45.2
  opentelemetry-semantic-conventions==0.66b2 opentelemetry-exporter-http-transport==0.66b2
  opentelemetry-exporter-otlp-common==0.66b2 googleapis-common-protos==1.76.0
  # sparsify
  eai-sparsify==1.3.3 natsort==8.4.0 schedulefree==1.4.1
  # dictionary_learning 0.1.0 and what `import dictionary_learning` loads (nnsight 0.3)
  dictionary-learning==0.1.0 nnsight==0.3.7 python-socketio==5.18.1 python-engineio==4.15.1 bidict==0.24.1
  simple-websocket==1.1.0 wsproto==1.3.2 websocket-client==1.9.2 zstandard==0.25.0
)
echo "+ pip download --no-deps ${PLAT[*]} -d $W ${WHEELS[*]}"
PIP_CONSTRAINT= "$PY" -m pip download -q --no-deps "${PLAT[@]}" -d "$W" "${WHEELS[@]}" 2>&1 | grep -v '^WARNING' || true
# the crosscoder commit, as a wheel (pure Python)
src=$(mktemp -d)
git -C "$DL_XC_SRC" archive "$DL_XC_COMMIT" | tar -x -C "$src"
echo "+ pip wheel --no-deps $src -w $W/xc  (dictionary_learning @ ${DL_XC_COMMIT:0:7})"
SETUPTOOLS_SCM_PRETEND_VERSION=0.0.0+${DL_XC_COMMIT:0:7} PIP_CONSTRAINT= "$PY" -m pip wheel -q --no-deps "$src" -w "$W/xc" 2>&1 | grep -v '^WARNING' || true
rm -rf "$src"
# requirements no import used here loads: SAELens's plotting, tokenizer-data and retry helpers; transformer-lens's
# streaming generator (sdist only); pyvis (featgraph imports it only in to_pyvis); nnsight's diffusers and
# torchvision extras for image models; dictionary_learning's plotting, UMAP and notebook views
IGNORE=(plotly plotly-express babe nltk python-dotenv tenacity transformers-stream-generator pyvis diffusers
        torchvision circuitsvis umap-learn)
"$PY" bench/check_wheelhouse.py "$W" bench/h200_packages.txt --ignore "${IGNORE[@]}"
du -sh "$W"

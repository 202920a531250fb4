#!/usr/bin/env bash
# Build one virtual environment per benchmark peer (their torch pins and dependency trees clash with featgraph's),
# outside the repository: bash bench/peers/make_venvs.sh [PEER ...]   (peers: sparsify dictionary-learning
# dictionary-learning-xc; default all). Prints every command before running it; --print only prints them.
#
#   PEER_VENVS   where the venvs go (default /work/peer-venvs; analyses.benchmark reads the same variable)
#   PY           the Python that makes them (default python3.11: the same minor version as featgraph's .venv)
#   TORCH        the torch pin installed first in each venv (default 2.13.0, a CPU build on this machine's disk;
#                a bare `torch` would pull a multi-GB CUDA build). On a GPU machine use the CUDA build you want.
#   DL_XC_SRC    a git directory of github.com/saprmarks/dictionary_learning holding commit 12e8427 (below); when
#                unset the commit is installed from GitHub with pip's git+https.
#
# SAELens needs no venv of its own: sae-lens is in featgraph's test extra (.venv), with the same torch.
#
# dictionary-learning: PyPI has one release, 0.1.0 (its BatchTopK, TopK, JumpReLU and standard trainers, no
# crosscoder). Its crosscoder trainer (CrossCoderTrainer, dictionary.CrossCoder) lives in commit 12e8427
# (2024-11-18, "applied black formatting", the crosscoder work of Minder & Dumas) of saprmarks/dictionary_learning,
# which no branch of that repository holds any more; it installs into a second venv because both are the package
# `dictionary_learning`.
set -euo pipefail
PEER_VENVS=${PEER_VENVS:-/work/peer-venvs}
PY=${PY:-python3.11}
TORCH=${TORCH:-2.13.0}
DL_XC_COMMIT=12e84279943aac935a5826c5743a2d48e3f161cf
PRINT_ONLY=0
peers=()
for a in "$@"; do
  case $a in
    --print) PRINT_ONLY=1 ;;
    *) peers+=("$a") ;;
  esac
done
[ ${#peers[@]} -eq 0 ] && peers=(sparsify dictionary-learning dictionary-learning-xc)

run() { echo "+ $*"; [ $PRINT_ONLY = 1 ] || "$@"; }

base() {  # a fresh venv with the torch pin
  local v=$PEER_VENVS/$1
  run "$PY" -m venv --clear "$v"
  run "$v/bin/python" -m pip install -q "torch==$TORCH"
}

for p in "${peers[@]}"; do
  v=$PEER_VENVS/$p
  case $p in
    sparsify)
      base sparsify
      run "$v/bin/python" -m pip install -q "torch==$TORCH" eai-sparsify==1.3.3 ;;
    dictionary-learning)
      base dictionary-learning
      run "$v/bin/python" -m pip install -q "torch==$TORCH" dictionary-learning==0.1.0
      # nnsight 0.3 pulls torchvision, whose PyPI wheel is built against the CUDA torch and breaks `import
      # transformers` next to a CPU torch ("operator torchvision::nms does not exist"); nothing here needs it
      if [ $PRINT_ONLY = 1 ] || "$v/bin/python" -c "import torch, sys; sys.exit(torch.version.cuda is not None)" 2>/dev/null; then
        run "$v/bin/python" -m pip uninstall -y -q torchvision
      fi ;;
    dictionary-learning-xc)
      base dictionary-learning-xc
      if [ -n "${DL_XC_SRC:-}" ]; then
        src=$PEER_VENVS/src/dictionary_learning-${DL_XC_COMMIT:0:7}
        run rm -rf "$src"
        run mkdir -p "$src"
        echo "+ git -C $DL_XC_SRC archive $DL_XC_COMMIT | tar -x -C $src"
        [ $PRINT_ONLY = 1 ] || git -C "$DL_XC_SRC" archive "$DL_XC_COMMIT" | tar -x -C "$src"
        # setuptools_scm finds no git metadata in an archive: give it the version
        SETUPTOOLS_SCM_PRETEND_VERSION=0.0.0+${DL_XC_COMMIT:0:7} run "$v/bin/python" -m pip install -q "torch==$TORCH" "$src"
      else
        run "$v/bin/python" -m pip install -q "torch==$TORCH" \
          "dictionary_learning @ git+https://github.com/saprmarks/dictionary_learning@$DL_XC_COMMIT"
      fi ;;
    *) echo "unknown peer $p (sparsify, dictionary-learning, dictionary-learning-xc)" >&2; exit 2 ;;
  esac
done

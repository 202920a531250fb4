"""A training run killed with SIGKILL and resumed from its last checkpoint ends bit-identical to an uninterrupted one."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from crosscoder.build import ARCHITECTURES

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, warnings
    warnings.simplefilter("ignore")
    import torch
    from analyses.tiny_model import TINY, load_embedded
    from crosscoder.build import build_crosscoder
    from crosscoder.config import CrosscoderConfig, TrainConfig, default_hookpoints
    from crosscoder.harvest import ActivationBuffer, estimate_norm_scales
    from crosscoder.io import save_crosscoder
    from crosscoder.train import train_crosscoder

    arch, ckpt, out, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    emb = load_embedded(TINY, progress=False)
    hps = default_hookpoints(emb.model.cfg.n_layers)
    rows = emb.tokens_train_NT[:60]
    scales = estimate_norm_scales(emb.model, rows, hps)
    cc = build_crosscoder(CrosscoderConfig.from_flat(hps, emb.model.cfg.d_model, 48, architecture=arch, k=8, aux_k=16, dead_after_tokens=512, seed=3))
    cc.norm_scale_L.copy_(scales)
    buf = ActivationBuffer(emb.model, rows, hps, scales, batch_size=64, n_buffer_tokens=512, seed=7)
    kill = (lambda s: os.kill(os.getpid(), signal.SIGKILL) if s == kill_at else None) if kill_at >= 0 else None
    train_crosscoder(cc, buf, TrainConfig(steps=40, batch_size=64, lr=3e-3, l1_coeff=0.5, log_every=5),
                     progress=False, checkpoint_dir=ckpt, checkpoint_every=10, resume=True, on_step=kill)
    save_crosscoder(cc, out)
    """
)


def run(tmp_path, arch, ckpt, out, kill_at):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, str(script), arch, str(ckpt), str(out), str(kill_at)], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("arch", ARCHITECTURES.names())
def test_sigkill_then_resume_is_bit_identical(tmp_path, tiny_embedded, arch):
    clean = run(tmp_path, arch, tmp_path / "ck_clean", tmp_path / "clean", -1)
    assert clean.returncode == 0, clean.stderr[-2000:]
    killed = run(tmp_path, arch, tmp_path / "ck", tmp_path / "resumed", 24)  # dies after step 24: last checkpoint at 20
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "ck" / "latest").read_text().strip() == "step-000000020"
    resumed = run(tmp_path, arch, tmp_path / "ck", tmp_path / "resumed", -1)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(str(tmp_path / "clean" / "crosscoder.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "crosscoder.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

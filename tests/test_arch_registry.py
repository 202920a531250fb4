"""Architectures as registry entries: options in the config, old cfg.json files, a toy architecture added at run
time, the hooks the generic code calls, and an import graph without cycles."""

import ast
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import crosscoder
import crosscoder.train as train_module
from crosscoder.batchtopk import BatchTopKOptions
from crosscoder.build import ARCHITECTURES, build_crosscoder
from crosscoder.config import CrosscoderConfig, TrainConfig
from crosscoder.crosscoder import Crosscoder, LossOutput
from crosscoder.errors import FeatgraphError
from crosscoder.io import load_crosscoder, save_crosscoder
from crosscoder.saelens import save_saelens
from crosscoder.train import train_crosscoder

from conftest import planted_batches

HPS = ["h0", "h1"]





# ---- the built-ins ------------------------------------------------------------------------------------------


def test_builtins_come_from_entry_points():
    assert {"relu", "batchtopk", "jumprelu"} <= set(ARCHITECTURES.names())
    for name, cls in ARCHITECTURES.items():
        assert issubclass(cls, Crosscoder) and cls.name == name
        assert dataclasses.is_dataclass(cls.Options)
        cfg = CrosscoderConfig(HPS, 8, 64, architecture=name)
        assert cfg.options == dataclasses.asdict(cls.Options()) and cfg.arch_options == cls.Options()


def test_options_are_filled_typed_and_checked():
    cfg = CrosscoderConfig(HPS, 8, 16, architecture="batchtopk", options={"k": 3})
    assert cfg.options == {"k": 3, "aux_k": 256, "aux_alpha": 1 / 32, "threshold_ema": 0.99}  # every value recorded
    assert cfg.arch_options == BatchTopKOptions(k=3) and build_crosscoder(cfg).opts.k == 3
    assert CrosscoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    cases = [
        (dict(architecture="batchtopk", options={"kk": 3}), r"^unknown batchtopk option 'kk'; allowed: k, aux_k, aux_alpha, threshold_ema$"),
        (dict(architecture="relu", options={"k": 3}), r"^unknown relu option 'k'; allowed: sparsity_norm$"),
        (dict(architecture="batchtopk", options={"k": 17}), "k must lie in 1..n_features"),
        (dict(architecture="batchtopk", options={"k": 0}), "k and aux_k must be positive"),
        (dict(architecture="jumprelu", options={"threshold_grad": "gdm"}), "choose anthropic or jumping_ahead"),
        (dict(architecture="relu", options={"sparsity_norm": "l3"}), "unknown sparsity_norm 'l3'"),
        (dict(architecture="gated"), r"^unknown architecture 'gated'; choose one of: .*batchtopk, jumprelu, .*relu"),
    ]
    for kw, msg in cases:
        with pytest.raises(FeatgraphError, match=msg) as e:
            CrosscoderConfig(HPS, 8, 16, **kw)
        assert "\n" not in str(e.value)


def test_from_flat_routes_keywords():
    cfg = CrosscoderConfig.from_flat(HPS, 8, 16, architecture="jumprelu", jumprelu_bandwidth=1.0, c=3.0, k=4, seed=2)
    assert cfg.options["bandwidth"] == 1.0 and cfg.options["c"] == 3.0 and cfg.seed == 2  # k: batchtopk's, ignored
    assert cfg == CrosscoderConfig(HPS, 8, 16, architecture="jumprelu", options={"bandwidth": 1.0, "c": 3.0}, seed=2)
    assert CrosscoderConfig.from_flat(HPS, 8, 16, k=4).options == {"sparsity_norm": "l1_of_norms"}
    with pytest.raises(FeatgraphError, match="unknown field 'kay'; use a CrosscoderConfig field or a batchtopk option"):
        CrosscoderConfig.from_flat(HPS, 8, 16, architecture="batchtopk", kay=4)
    with pytest.raises(FeatgraphError, match="'k' is given twice"):
        CrosscoderConfig.from_flat(HPS, 8, 16, architecture="batchtopk", k=4, options={"k": 5})


# ---- cfg.json written before options existed ---------------------------------------------------------------

OLD_FLAT = {  # CrosscoderConfig.to_dict() as it was, every architecture's fields at the top level
    "hookpoints": HPS, "d_model": 8, "n_features": 16, "dec_init_norm": 0.08, "model_name": "m", "seed": 0,
    "out_hookpoints": None, "architecture": "relu", "sparsity_norm": "l1_of_norms", "k": 32, "aux_k": 256,
    "aux_alpha": 0.03125, "dead_after_tokens": 100000, "threshold_ema": 0.99, "jumprelu_bandwidth": 2.0,
    "jumprelu_init_threshold": 0.1, "jumprelu_c": 4.0, "jumprelu_preact_coeff": 3e-6, "models": None,
    "model_norm": "sum", "n_shared_latents": 0, "shared_sparsity_scale": 0.15,
}


def test_old_flat_cfg_dicts_move_into_options():
    relu = CrosscoderConfig.from_dict({**OLD_FLAT, "sparsity_norm": "l2_of_norms", "k": 7})
    assert relu.options == {"sparsity_norm": "l2_of_norms"}
    btk = CrosscoderConfig.from_dict({**OLD_FLAT, "architecture": "batchtopk", "k": 7, "aux_k": 9, "threshold_ema": 0.9})
    assert btk.options == {"k": 7, "aux_k": 9, "aux_alpha": 0.03125, "threshold_ema": 0.9}
    jr = CrosscoderConfig.from_dict({**OLD_FLAT, "architecture": "jumprelu", "jumprelu_bandwidth": 1.5, "jumprelu_c": 3.0})
    # threshold_grad did not exist: those crosscoders were trained with the Jumping-Ahead gradient, and keep it
    assert jr.options == {"bandwidth": 1.5, "init_threshold": 0.1, "c": 3.0, "preact_coeff": 3e-6, "threshold_grad": "jumping_ahead"}
    assert CrosscoderConfig(HPS, 8, 16, architecture="jumprelu").options["threshold_grad"] == "anthropic"  # new default
    with pytest.raises(FeatgraphError, match="cfg.json has unknown field 'colour'"):
        CrosscoderConfig.from_dict({**OLD_FLAT, "colour": "red"})


@pytest.mark.parametrize("arch", ["relu", "batchtopk", "jumprelu"])
def test_an_old_crosscoder_folder_loads(arch, tmp_path):
    cc = build_crosscoder(CrosscoderConfig.from_flat(HPS, 8, 16, architecture=arch, model_name="m", k=4))
    save_crosscoder(cc, tmp_path / "cc")
    path = tmp_path / "cc" / "cfg.json"
    meta = json.loads(path.read_text())
    meta["config"] = {**OLD_FLAT, "architecture": arch, "k": 4}
    path.write_text(json.dumps(meta))
    back = load_crosscoder(tmp_path / "cc")
    assert back.cfg.options == {**cc.cfg.options, **({"threshold_grad": "jumping_ahead"} if arch == "jumprelu" else {})}
    x = torch.randn(8, 2, 8)
    cc.eval()
    assert torch.equal(back(x), cc(x))
    save_crosscoder(back, tmp_path / "again")  # re-saved in the new layout, every option written out
    assert json.loads((tmp_path / "again" / "cfg.json").read_text())["config"]["options"] == back.cfg.options


# ---- an architecture added at run time ----------------------------------------------------------------------


@dataclass
class ShiftOptions:
    """Options of the toy architecture."""

    shift: float = 0.5
    """Subtracted from every pre-activation before the ReLU."""

    def __post_init__(self) -> None:
        if self.shift < 0:
            raise FeatgraphError(f"shift must be >= 0, got {self.shift}")


class ShiftedReLUCrosscoder(Crosscoder):
    """f = gain · ReLU(pre − shift) with a learned per-feature gain, L1 penalty: defined in this file only."""

    name = "shifted_relu"
    Options = ShiftOptions

    def __init__(self, cfg):
        super().__init__(cfg)
        self.gain_F = nn.Parameter(torch.ones(cfg.n_features))
        self.syncs = 0

    def encode(self, x_BLD, normalised=False):
        return torch.relu(self.pre_activations(x_BLD, normalised) - self.opts.shift) * self.gain_F

    def loss(self, x_BLD, sparsity_coeff):
        f_BF = self.encode(x_BLD, normalised=True)
        mse = self.mse(x_BLD, self.decode(f_BF, normalised=True))
        sparsity = f_BF.sum(dim=1).mean()
        return LossOutput(mse + sparsity_coeff * sparsity, mse, sparsity, (f_BF > 0).float().sum(dim=1).mean(), f_BF)

    def sync_distributed(self):
        self.syncs += 1


@pytest.fixture
def toy():
    ARCHITECTURES.register("shifted_relu", ShiftedReLUCrosscoder)
    yield ShiftedReLUCrosscoder
    ARCHITECTURES._entries.pop("shifted_relu", None)  # the Registry has no unregister; other tests see the built-ins


def test_a_toy_architecture_builds_trains_saves_and_loads(toy, tmp_path):
    cfg = CrosscoderConfig(HPS, 8, 24, architecture="shifted_relu", options={"shift": 0.05}, seed=1)
    assert "shifted_relu" in ARCHITECTURES.names() and cfg.arch_options == ShiftOptions(0.05)
    cc = build_crosscoder(cfg)
    assert type(cc) is toy
    res = train_crosscoder(cc, planted_batches(), TrainConfig(steps=150, batch_size=128, lr=3e-3, l1_coeff=0.01, log_every=25), progress=False)
    assert res.history[-1]["mse"] < 0.5 * res.history[0]["mse"], res.history
    assert not torch.equal(cc.gain_F, torch.ones(24))  # its own parameter trained
    save_crosscoder(cc, tmp_path / "toy")
    saved = json.loads((tmp_path / "toy" / "cfg.json").read_text())
    assert saved["architecture"] == "shifted_relu" and saved["config"]["options"] == {"shift": 0.05}
    back = load_crosscoder(tmp_path / "toy")
    assert type(back) is toy and back.cfg == cc.cfg and not back.training
    assert torch.equal(back.gain_F, cc.gain_F)
    x = planted_batches(seed=8)()
    assert torch.equal(back(x), cc(x))
    with pytest.raises(FeatgraphError, match=r"^unknown shifted_relu option 'k'; allowed: shift$"):
        CrosscoderConfig(HPS, 8, 24, architecture="shifted_relu", options={"k": 3})
    with pytest.raises(FeatgraphError, match="shift must be >= 0"):
        CrosscoderConfig(HPS, 8, 24, architecture="shifted_relu", options={"shift": -1.0})
    one = build_crosscoder(CrosscoderConfig(["h0"], 8, 24, architecture="shifted_relu"))
    with pytest.raises(FeatgraphError, match="cannot export architecture 'shifted_relu' to SAELens; supported: batchtopk, jumprelu, matryoshka_batchtopk, matryoshka_relu, relu"):
        save_saelens(one, tmp_path / "sae")


def test_a_class_refuses_another_architectures_config(toy):
    with pytest.raises(FeatgraphError, match="this config is for a relu crosscoder, not shifted_relu"):
        toy(CrosscoderConfig(HPS, 8, 16))


def test_training_calls_sync_distributed_after_the_gradient_all_reduce(toy, monkeypatch):
    """Two ranks with the same batch, faked: all_reduce sums two equal copies. Gradients stay the mean, the
    architecture's hook runs once, and BatchTopK's θ stays the mean of two equal thresholds."""
    monkeypatch.setattr(train_module, "_world", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t, op=None: t.mul_(2))
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    x = planted_batches()()
    for cc in (toy(CrosscoderConfig(HPS, 8, 24, architecture="shifted_relu")), build_crosscoder(CrosscoderConfig.from_flat(HPS, 8, 24, architecture="batchtopk", k=4))):
        cc.train()
        cc.loss(cc.normalise(x), 0.1).loss.backward()
        before = [p.grad.clone() for p in cc.parameters() if p.grad is not None]
        theta = getattr(cc, "threshold", torch.tensor(0.0)).clone()
        train_module._sync_gradients(cc)
        for g, b in zip([p.grad for p in cc.parameters() if p.grad is not None], before):
            torch.testing.assert_close(g, b)
        if hasattr(cc, "threshold"):
            assert theta > 0 and cc.threshold == theta
        else:
            assert cc.syncs == 1


# ---- imports ------------------------------------------------------------------------------------------------


def _relative_imports(path: Path) -> set[str]:
    """Sibling modules a crosscoder/ module imports, anywhere in it (functions included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out |= {node.module} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("crosscoder."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("crosscoder.")}
    return out


def test_the_crosscoder_core_imports_without_cycles():
    core = ["architectures", "batchtopk", "build", "checkpoint", "config", "crosscoder", "errors", "io", "jumprelu",
            "registry", "relu", "saelens", "train"]
    root = Path(crosscoder.__file__).parent
    graph = {m: _relative_imports(root / f"{m}.py") & set(core) for m in core}
    assert "io" not in graph["crosscoder"] and "crosscoder" in graph["io"]  # one direction: io → crosscoder
    assert not ({"relu", "batchtopk", "jumprelu"} & (graph["build"] | graph["config"] | graph["saelens"] | graph["train"]))
    done, stack = set(), []

    def visit(m):
        assert m not in stack, f"import cycle: {' → '.join(stack[stack.index(m):] + [m])}"
        if m in done:
            return
        stack.append(m)
        for n in graph[m]:
            visit(n)
        stack.pop()
        done.add(m)

    for m in core:
        visit(m)

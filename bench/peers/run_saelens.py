"""SAELens training SAEs under the shared harness (run with a python that has sae-lens; featgraph's .venv does):
``python bench/peers/run_saelens.py --data ACTS --arch standard|topk|batchtopk|jumprelu --features F --batch B``.

One step is what SAELens's ``SAETrainer._train_step`` does: ``training_forward_pass`` (bf16 autocast on CUDA, as
SAELens's ``autocast`` option), backward, clip the gradient norm to 1, Adam step — on d_in = L·D (the hookpoints
concatenated), with SAELens's default coefficients and no dead features."""

import torch
from _common import Setup, parser

import sae_lens
from sae_lens.saes.sae import TrainStepInput


def build(arch: str, d_in: int, F: int, k: int, device: str):
    from sae_lens import saes

    if arch == "standard":
        return saes.StandardTrainingSAE(saes.StandardTrainingSAEConfig(d_in=d_in, d_sae=F, device=device))
    if arch == "topk":
        return saes.TopKTrainingSAE(saes.TopKTrainingSAEConfig(d_in=d_in, d_sae=F, k=k, device=device))
    if arch == "batchtopk":
        return saes.BatchTopKTrainingSAE(saes.BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=F, k=k, device=device))
    if arch == "jumprelu":
        return saes.JumpReLUTrainingSAE(saes.JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=F, device=device))
    raise SystemExit(f"unknown SAELens architecture {arch!r}: standard, topk, batchtopk, jumprelu")


def main() -> None:
    s = Setup(parser(__doc__.splitlines()[0]).parse_args())
    a = s.args
    sae = build(a.arch, s.L * s.D, a.features, a.k, a.device)
    sae.train()
    coeffs = {n: getattr(c, "value", c) for n, c in sae.get_coefficients().items()}
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4)
    dead = torch.zeros(a.features, dtype=torch.bool, device=a.device)
    step = [0]

    def run(n: int) -> None:
        for _ in range(n):
            with s.autocast():
                out = sae.training_forward_pass(TrainStepInput(s.next_flat(), coeffs, dead, step[0], False))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            step[0] += 1

    s.measure(f"sae-lens {a.arch} SAE", run, version=sae_lens.__version__)


if __name__ == "__main__":
    main()

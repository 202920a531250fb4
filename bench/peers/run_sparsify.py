"""EleutherAI sparsify (eai-sparsify) TopK sparse coder under the shared harness (run with its own venv):
``PEER/bin/python bench/peers/run_sparsify.py --data ACTS --arch topk --features F --batch B --k K``.

One step is the autoencoding part of ``sparsify.Trainer.fit``: forward (``SparseCoder.forward``, which autocasts to
bf16 itself on CUDA) → fvu loss, backward, ``remove_gradient_parallel_to_decoder_directions``, optimiser step,
``set_decoder_norm_to_unit_norm`` — on d_in = L·D. The optimiser is torch Adam (sparsify's ``optimizer="adam"``
without bitsandbytes) rather than its default signum, so that every line runs Adam; no AuxK (no dead latents)."""

import torch
from _common import Setup, parser

import sparsify
from sparsify import SparseCoder, SparseCoderConfig


def main() -> None:
    s = Setup(parser(__doc__.splitlines()[0]).parse_args())
    a = s.args
    if a.arch != "topk":
        raise SystemExit("sparsify trains TopK sparse coders: --arch topk")
    sae = SparseCoder(s.L * s.D, SparseCoderConfig(num_latents=a.features, k=a.k), device=a.device)
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / (a.features / 2**14) ** 0.5)

    def run(n: int) -> None:
        for _ in range(n):
            x = s.next_flat()
            out = sae(x)
            out.fvu.backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            opt.zero_grad()
            sae.set_decoder_norm_to_unit_norm()

    s.measure("sparsify topk SAE", run, version=getattr(sparsify, "__version__", "1.3.3"))


if __name__ == "__main__":
    main()

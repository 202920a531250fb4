"""featgraph's own crosscoder step under the shared harness (run with featgraph's .venv python):
``python bench/peers/run_featgraph.py --data ACTS --arch relu|batchtopk|jumprelu --features F --batch B [--k K]``.

The timed work is :func:`crosscoder.train.train_crosscoder` for ``--steps`` steps (its whole loop: schedules, Adam,
gradient clipping, decoder handling; bf16 autocast on CUDA), as a user runs it."""

from _common import Setup, parser

from crosscoder.build import build_crosscoder
from crosscoder.config import CrosscoderConfig, TrainConfig
from crosscoder.train import train_crosscoder


def main() -> None:
    s = Setup(parser(__doc__.splitlines()[0]).parse_args())
    a = s.args
    opts = {"k": a.k} if a.arch == "batchtopk" else {}
    cfg = CrosscoderConfig.from_flat([f"h{l}" for l in range(s.L)], s.D, a.features, architecture=a.arch, **opts)
    cc = build_crosscoder(cfg).to(a.device)

    def run(n: int) -> None:
        if n > 0:
            train_crosscoder(cc, s.next_NLD, TrainConfig(steps=n, batch_size=s.B, log_every=10**9), progress=False)

    s.measure(f"featgraph {a.arch} crosscoder", run)


if __name__ == "__main__":
    main()

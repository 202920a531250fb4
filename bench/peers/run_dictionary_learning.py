"""dictionary_learning trainers under the shared harness (run with its own venv):
``PEER/bin/python bench/peers/run_dictionary_learning.py --data ACTS --arch batchtopk|crosscoder --features F --batch B``.

``batchtopk``: ``trainers.BatchTopKTrainer`` (PyPI 0.1.0) on d_in = L·D; ``crosscoder``: ``CrossCoderTrainer``
(the commit bench/peers/make_venvs.sh installs) on (B, L, D) with ``num_layers`` = L. One step is the trainer's own
``update(step, activations)`` (loss, backward, its gradient and decoder-norm handling, Adam, LR schedule), under
bf16 autocast on CUDA. BatchTopK starts its threshold EMA at step 0 (default: 1,000) so the few timed steps do what
the bulk of a long run does, and has no LR warm-up (it must be shorter than the run)."""

import inspect

from _common import Setup, parser


def main() -> None:
    s = Setup(parser(__doc__.splitlines()[0]).parse_args())
    a = s.args
    from dictionary_learning import trainers

    if a.arch == "batchtopk":
        cls = getattr(trainers, "BatchTopKTrainer", None) or getattr(trainers, "TrainerBatchTopK")
        total = a.warmup + a.steps
        kw = dict(steps=total, activation_dim=s.L * s.D, dict_size=a.features, k=a.k, layer=0, lm_name="bench",
                  device=a.device, seed=0, warmup_steps=0, threshold_start_step=0)
        kw = {k: v for k, v in kw.items() if k in inspect.signature(cls.__init__).parameters}
        tr = cls(**kw)
        batch = s.next_flat
    elif a.arch == "crosscoder":
        cls = getattr(trainers, "CrossCoderTrainer", None)
        if cls is None:
            raise SystemExit("this dictionary_learning has no CrossCoderTrainer (PyPI 0.1.0 has none): "
                             "build the dictionary-learning-xc venv with bench/peers/make_venvs.sh")
        tr = cls(num_layers=s.L, activation_dim=s.D, dict_size=a.features, layer=0, lm_name="bench", device=a.device,
                 seed=0)
        batch = s.next_NLD
    else:
        raise SystemExit(f"unknown dictionary_learning trainer {a.arch!r}: batchtopk, crosscoder")
    step = [0]

    def run(n: int) -> None:
        for _ in range(n):
            x = batch()
            with s.autocast():
                tr.update(step[0], x)
            step[0] += 1

    import dictionary_learning

    s.measure(f"dictionary_learning {a.arch}", run, version=getattr(dictionary_learning, "__version__", "?"))


if __name__ == "__main__":
    main()

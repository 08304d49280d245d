r"""8-bit (and 4-bit) vs float32 Adam state: ResNet-20 on digits, several seeds.

Dettmers et al., "8-bit Optimizers via Block-wise Quantization" (2022) claim that
8-bit block-wise states match 32-bit ones. This runs the main job
(experiments/train.py) with AdamW and ``optimizer_state_bits`` in {32, 8, 4} for
each seed, and prints test accuracy per run and the mean per setting:

  python -m experiments.optim_8bit --seeds=0,1,2 --bits=32,8 --workdir=runs/optim_8bit

Each run is a normal, resumable workdir ``<workdir>/bits<b>_seed<s>``.
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging

from experiments import config_utils
from experiments import train as main_job

_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (data order and init).")
_BITS = flags.DEFINE_list("bits", ["32", "8"], "Optimizer-state bits to compare.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/optim_8bit", "Parent of the run directories.")


def get_config(bits: int, seed: int):
    """The default main job with AdamW (lr 3e-3, wd 0.05) and ``bits``-bit state."""
    config = config_utils.load_config()
    config.update(
        dict(
            seed=seed,
            optimizer="adamw",
            learning_rate=3e-3,
            weight_decay=0.05,
            optimizer_state_bits=bits,
            eval_every=config.num_steps,
        )
    )
    return config


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    results = {}
    for bits in map(int, _BITS.value):
        for seed in map(int, _SEEDS.value):
            workdir = os.path.join(_WORKDIR.value, f"bits{bits}_seed{seed}")
            summary = main_job.train_and_evaluate(get_config(bits, seed), workdir)
            results[(bits, seed)] = summary["test_accuracy"]
            print(
                f"bits={bits} seed={seed}: test accuracy {summary['test_accuracy']:.4f} "
                f"({summary['wall_time']:.0f} s)",
                flush=True,
            )
    table = {}
    for bits in map(int, _BITS.value):
        accs = [results[(bits, int(s))] for s in _SEEDS.value]
        table[bits] = accs
        print(f"bits={bits}: mean test accuracy {sum(accs) / len(accs):.4f} over {accs}")
    with open(os.path.join(_WORKDIR.value, "results.json"), "w") as f:
        json.dump({str(k): v for k, v in table.items()}, f, indent=2)


if __name__ == "__main__":
    app.run(main)

r"""Moved: HAWQ-V2 mixed precision vs uniform weight bits is the study experiments/studies/hawq.py.

  python -m experiments.quant.mixed_precision [--quick] [--workdir DIR]

runs ``python -m archjax.studies run experiments/studies/hawq.py`` with the same
arguments; ``fit`` and ``plot`` it with ``python -m archjax.studies fit|plot
experiments/studies/hawq.py``. The study trains the float model once per seed, allocates
the bits with ``archjax.quant.mixed`` at the size of uniform 6/4/3-bit weights, and
fine-tunes each quantized model (QAT) with the main job (docs/reproductions.md).
"""

from __future__ import annotations

import os
import sys

STUDY = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "studies", "hawq.py"
)


def cli() -> None:
    """Entry point of ``python -m experiments.quant.mixed_precision``: runs the study."""
    from archjax.studies.__main__ import main

    sys.exit(main(["run", STUDY, *sys.argv[1:]]))


if __name__ == "__main__":
    cli()

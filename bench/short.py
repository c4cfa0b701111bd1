"""A whole short training process for the start-up figures of bench/run.py: `python bench/short.py VARIANT`.
Imports what the variant needs, builds the XOR data and model, trains 20,000 samples, exits."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.variants import VARIANTS, load_workload  # noqa: E402

w = load_workload("xor", Path(__file__).resolve().parent / "configs", ["data.args.num_train=20000", "trainer.epochs=1"])
VARIANTS[sys.argv[1]](w)

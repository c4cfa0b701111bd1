"""Run a user script's `main(argv)` REPEAT times in one process (each with seed=i and its own run.dir
RUN_ROOT/i; with ALTERNATE, odd runs get that argument too): many whole runs under one torchrun launch,
without a launcher start per run (each distrain.fit makes and destroys its own process group).

    torchrun ... tests/helpers/repeat_fit.py SCRIPT.py CONFIG [key=value ...]   (env: REPEAT, RUN_ROOT, ALTERNATE)
"""

import os
import runpy
import sys

script, *argv = sys.argv[1:]
main = runpy.run_path(script, run_name="repeated")["main"]
for i in range(int(os.environ["REPEAT"])):
    extra = [os.environ["ALTERNATE"]] if i % 2 and os.environ.get("ALTERNATE") else []
    main([*argv, *extra, f"seed={i}", f"run.dir={os.environ['RUN_ROOT']}/{i}"])

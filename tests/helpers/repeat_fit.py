"""Run a user script's `main(argv)` REPEAT times in one process (each with seed=i and its own run.dir
under RUN_ROOT): many whole runs under one torchrun, without a launcher start per run.

    torchrun ... tests/helpers/repeat_fit.py SCRIPT.py CONFIG [key=value ...]   (env: REPEAT, RUN_ROOT)
"""

import os
import runpy
import sys

script, *argv = sys.argv[1:]
main = runpy.run_path(script, run_name="repeated")["main"]
for i in range(int(os.environ["REPEAT"])):
    main([*argv, f"seed={i}", f"run.dir={os.environ['RUN_ROOT']}/{i}"])

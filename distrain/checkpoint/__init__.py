"""How is state saved and found again? Checkpoints in <run.dir>/checkpoints/, atomic and verified.

- files.py       the building blocks: hashing while writing, the manifest, publish, removal, weights-only load
- store.py       the run's checkpoints: save (whole .pt or sharded), keep-last/best, find and load for resume
- sharded.py     sharded checkpoints (DCP): every rank's shards, verified, resharded on load
- parking.py     a step saved again: its previous complete copy kept until the new one is published
- background.py  writes in a thread of their own from a staged CPU copy (checkpoint.async_save)
- ownership.py   one run per run directory (a lock held by global rank 0)
- export.py, inspection.py   the `distrain export` and `distrain inspect` commands
"""

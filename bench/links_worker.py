"""One node's process of bench/links.py: distrain trains the links workload (CONFIG + overrides) and a
callback records, at global steps FIRST and LAST, the time and the bytes this node's end of the link has
sent (its interface counter, /sys/class/net/$GLOO_SOCKET_IFNAME), written as JSON to $LINKS_OUT.

    torchrun ... bench/links_worker.py bench/configs/links.yaml data.args.root=DATA strategy=diloco
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import distrain


def tx_bytes() -> int:
    device = os.environ.get("GLOO_SOCKET_IFNAME")
    if not device:
        return 0
    return int(Path(f"/sys/class/net/{device}/statistics/tx_bytes").read_text())


class LinkProbe:
    """At the end of steps FIRST and LAST: (time, bytes sent)."""

    def __init__(self, first: int, last: int):
        self.first, self.last = first, last
        self.marks: dict[int, tuple[float, int]] = {}

    def on_step_end(self, run) -> None:
        if run.global_step in (self.first, self.last):
            self.marks[run.global_step] = (time.perf_counter(), tx_bytes())


def main() -> None:
    cfg = distrain.load_config(sys.argv[1], sys.argv[2:])
    first, last = int(os.environ.get("LINKS_FIRST", "0")), int(os.environ.get("LINKS_LAST", "0"))
    probe = LinkProbe(first, last)
    result = distrain.fit(cfg, callbacks=[probe])
    out = os.environ.get("LINKS_OUT")
    if out:
        (t0, b0), (t1, b1) = probe.marks.get(first, (0.0, 0)), probe.marks.get(last, (0.0, 0))
        Path(out).write_text(
            json.dumps(
                {
                    "seconds": t1 - t0,
                    "tx_bytes": b1 - b0,
                    "steps": last - first,
                    "test_accuracy": result.test.get("accuracy"),
                    "rank": int(os.environ.get("RANK", "0")),
                }
            )
        )


if __name__ == "__main__":
    distrain.run_main(main)

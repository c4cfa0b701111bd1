"""Two "nodes" on one machine, joined by a link of a chosen speed: two network namespaces and a veth pair
between them, shaped with `tc ... tbf` on both ends (netem, for added delay, is not in every kernel).

    with ShapedLink("100mbit") as link:                   # None: unshaped
        a = link.start(0, ["torchrun", "--nnodes=2", ...], env)   # in namespace 0 (10.78.0.1)
        b = link.start(1, [...], env)                              # in namespace 1 (10.78.0.2)
        ...
        link.tx_bytes()                                   # bytes sent so far, both ends (interface counters)

Needs root, `ip netns` and `tc` (ShapedLink.unavailable() says why not, for a skip). The addresses are
the namespaces' own, made here and removed on exit; nothing leaves the machine. Used by bench/links.py
and tests/test_links.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

ADDRESSES = ("10.78.0.1", "10.78.0.2")


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


class ShapedLink:
    def __init__(self, rate: str | None = None):
        tag = uuid.uuid4().hex[:6]
        self.rate = rate
        self.namespaces = (f"dl{tag}a", f"dl{tag}b")
        self.interfaces = (f"dl{tag}va", f"dl{tag}vb")

    @staticmethod
    def unavailable() -> str | None:
        """Why two shaped namespaces cannot be made here, or None."""
        if os.geteuid() != 0:
            return "needs root (network namespaces)"
        for tool in ("ip", "tc"):
            if shutil.which(tool) is None:
                return f"needs the `{tool}` command (iproute2)"
        probe = f"dlprobe{uuid.uuid4().hex[:6]}"
        made = _sh("ip", "netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"`ip netns add` fails here: {made.stderr.strip()}"
        _sh("ip", "netns", "del", probe, check=False)
        return None

    def __enter__(self) -> ShapedLink:
        a, b = self.namespaces
        va, vb = self.interfaces
        try:
            for ns in (a, b):
                _sh("ip", "netns", "add", ns)
                _sh("ip", "-n", ns, "link", "set", "lo", "up")
            _sh("ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b)
            for ns, dev, address in ((a, va, ADDRESSES[0]), (b, vb, ADDRESSES[1])):
                _sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", dev)
                _sh("ip", "-n", ns, "link", "set", dev, "up")
                if self.rate is not None:
                    # tbf: a token bucket at `rate`; the burst must hold at least rate/HZ bytes.
                    burst = "256kb" if self.rate.endswith("gbit") else "64kb"
                    _sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                        "rate", self.rate, "burst", burst, "latency", "100ms")  # fmt: skip
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in self.namespaces:
            _sh("ip", "netns", "del", ns, check=False)  # the veth pair goes with its namespaces

    def command(self, node: int, cmd: list[str]) -> list[str]:
        """`cmd` run inside node `node`'s namespace."""
        return ["ip", "netns", "exec", self.namespaces[node], *cmd]

    def start(self, node: int, cmd: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen:
        """Start `cmd` in node `node`'s namespace, with GLOO_SOCKET_IFNAME set to its end of the link."""
        env = dict(env, GLOO_SOCKET_IFNAME=self.interfaces[node])
        out = open(log, "w") if log is not None else subprocess.DEVNULL  # noqa: SIM115 (closed with the process)
        return subprocess.Popen(
            self.command(node, cmd), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def tx_bytes(self) -> int:
        """Bytes sent on the link so far, both ends together (the interfaces' own counters)."""
        total = 0
        for ns, dev in zip(self.namespaces, self.interfaces):
            read = _sh("ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/statistics/tx_bytes")
            total += int(read.stdout.strip())
        return total

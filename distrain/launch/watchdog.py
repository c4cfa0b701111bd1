"""Hangs and orphans found and named: one thread per rank that watches the step loop and the launcher.

    with Watchdog(env, hang_timeout=300, resume_hint=...) as watchdog:   # every rank of a distributed run
        watchdog.arm()           # the loop starts; watchdog.disarm() when it ends
        ... progress(step) ...   # the loop, after each step, evaluation batch and checkpoint

**A hang.** When no step, evaluation batch or checkpoint has finished for `trainer.hang_timeout` seconds,
each rank writes its report into the rendezvous store the group was created with (a side channel: the main
thread may be blocked inside a collective of the process group, which the watchdog never touches): its
Python stack, the distrain collective it is in with its sequence number (dist.IN_COLLECTIVE), and its last
finished step. Rank 0 (or the first rank able to) waits briefly for every report and prints one message
naming the rank(s) behind, where each one is and what that usually means, or the two different collectives
the ranks met in; then every rank exits with status 5 (HANG_EXIT). Nothing is saved from here: checkpoints
are written atomically, so the newest complete one is intact and a rerun or requeue resumes from it.

**An orphan.** A worker whose launcher is gone (torchrun's agent or srun's step daemon: its parent process;
the worker is re-parented when it dies) notices within a second, says so in one line and sends itself
SIGTERM: the ranks agree to stop, save a checkpoint and exit (128+15), releasing the run directory. If the
main thread cannot get there (a hang), the process exits with status 6 (ORPHAN_EXIT) after `orphan_grace_s`.

The step loop's only cost is `progress()`: one counter increment.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import sysconfig
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from distrain.launch import dist
from distrain.launch.env import DistEnv

log = logging.getLogger("distrain")

HANG_EXIT = 5
"""Exit status of every rank of a job stopped by the hang watchdog."""
ORPHAN_EXIT = 6
"""Exit status of a worker whose launcher is gone and whose loop could not stop in time to save."""

STOPPING = threading.Event()
"""Set once this rank's watchdog has found a hang: the main thread, woken by a peer's exit, leaves the exit
to the watchdog (`wait_for_the_watchdog`) instead of reporting a lost peer."""

_DUMP_SIGNAL = getattr(signal, "SIGRTMIN", None)
"""The signal that asks a DataLoader worker for its stack (a real-time signal nothing else uses)."""
if _DUMP_SIGNAL is not None:
    _DUMP_SIGNAL += 7
_FRAME = re.compile(r'File "([^"]+)", line (\d+) in (\S+)')
_STARTED = [0.0]  # when this process's watchdog started: an older stacks dump is a previous attempt's
_BEATS = [0, -1]  # [progress count, last finished global step]: written by the loop, read by the watchdog


def resolve_hang_timeout(hang_timeout: float | None, pg_timeout_s: float) -> float | None:
    """trainer.hang_timeout as the watchdog uses it: null is 300 s, or half of dist.timeout_s when that is
    shorter (the process group's timeout must never fire first); 0 is off (None)."""
    if hang_timeout is None:
        return min(300.0, pg_timeout_s / 2)
    return hang_timeout or None


def progress(step: int | None = None) -> None:
    """The loop made progress (a step with its global number, an evaluation batch, a checkpoint)."""
    _BEATS[0] += 1
    if step is not None:
        _BEATS[1] = step


# What a wait inside distrain's own code is for, by the function it is in (the innermost one that is named).
_PURPOSES = {
    "agreed_signal": "the signal check of each step",
    "evaluate": "the evaluation totals",
    "train_sums": "the epoch's train sums",
    "maybe_log_step": "the logging window's sums",
    "maybe_stop": "the stop verdict",
    "agree_finite": "the non-finite check",
    "allows_step": "the non-finite check of the step",
    "exchange": "the gradient exchange",
    "gradients": "the gradient exchange",
    "save": "a checkpoint save",
    "write_config": "the start of the run",
    "own_run_dir": "the start of the run",
    "maybe_resume": "the resume",
    "close": "the end of the run",
    "sync": "the replicas' averaging",
}
_PACKAGE = str(Path(__file__).resolve().parents[1])
_LIBRARIES = tuple(
    {str(Path(p).resolve()) for p in (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]) if p}
)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _launcher_is_parent(source: str) -> bool:
    """Whether this process's parent is the launcher that started it (watched for orphans)."""
    if source == "torchrun":
        return "TORCHELASTIC_RUN_ID" in os.environ
    if source == "slurm":
        try:
            return Path(f"/proc/{os.getppid()}/comm").read_text().strip() == "slurmstepd"
        except OSError:
            return False
    return False


class Watchdog:
    """The watch over one rank (see the module's docstring). A context manager: the thread runs inside."""

    def __init__(
        self,
        env: DistEnv,
        *,
        hang_timeout: float | None,
        resume_hint: Callable[[], str] | None = None,
        on_orphan: Callable[[], None] | None = None,
        stacks: Path | None = None,
        poll_s: float = 1.0,
        orphan_grace_s: float = 30.0,
    ):
        self.env, self.hang_timeout = env, hang_timeout or None
        self.resume_hint, self.on_orphan = resume_hint, on_orphan
        self.poll_s, self.orphan_grace_s = poll_s, orphan_grace_s
        # The launcher is the parent: torchrun's agent (TORCHELASTIC_RUN_ID set), or slurmstepd under srun. A
        # worker started by hand, by a wrapper shell or by another launcher (Ray) has a parent that may exit
        # legitimately: not watched.
        self.launcher = os.getppid() if _launcher_is_parent(env.source) else None
        self._main = threading.get_ident()  # the thread that trains (the watchdog is built on it)
        # Where this rank's Python stacks go if the process aborts (gloo ends a process that receives a
        # collective of another size: "Received data size doesn't match expected size"): the survivors read
        # it to name the two collectives that met (`aborted_peer`).
        self.stacks, self._stack_file, self._faulthandler_was = stacks, None, None
        self._armed, self._armed_at = False, 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Watchdog:
        _STARTED[0] = time.time() - 1.0  # file times may be coarse
        if self.stacks is not None and self.env.is_distributed:
            import faulthandler

            try:
                self.stacks.mkdir(parents=True, exist_ok=True)
                self._drop_worker_dumps()
                self._stack_file = open(self.stacks / f"rank-{self.env.rank}.txt", "w")
                # Which thread of a dump trains: a reader in another process finds its block by this id.
                self._stack_file.write(f"main thread 0x{self._main:016x}\n")
                self._stack_file.flush()
                self._faulthandler_was = faulthandler.is_enabled()
                faulthandler.enable(self._stack_file, all_threads=True)
            except OSError:
                self._stack_file = None
            if self._stack_file is not None and _DUMP_SIGNAL is not None:
                from distrain import seeding

                seeding.WORKER_HOOKS.append(self._worker_dump)
        if self.launcher is not None or (self.hang_timeout and self.env.is_distributed):
            self._thread = threading.Thread(target=self._watch, name="distrain-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._armed = False
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)  # it wakes at once; the run leaves no thread of its own behind
        if self._stack_file is not None:
            import faulthandler

            from distrain import seeding

            if self._worker_dump in seeding.WORKER_HOOKS:
                seeding.WORKER_HOOKS.remove(self._worker_dump)
            self._drop_worker_dumps()
            faulthandler.disable()
            if self._faulthandler_was:
                faulthandler.enable()
            self._stack_file.close()
            self._stack_file = None

    def _drop_worker_dumps(self) -> None:
        for path in self.stacks.glob(f"rank-{self.env.rank}-worker-*.txt"):
            try:
                path.unlink()
            except OSError:
                pass

    def _worker_dump(self, worker_id: int) -> None:
        """In a DataLoader worker: dump its stack into the stacks folder when the watchdog asks (a signal)."""
        import faulthandler
        from multiprocessing import util

        try:
            faulthandler.disable()  # a worker's own crash is not its rank's abort (the rank's dump file)
            path = self.stacks / f"rank-{self.env.rank}-worker-{os.getpid()}.txt"
            dump = open(path, "w")
            faulthandler.register(_DUMP_SIGNAL, dump, all_threads=True)
            # Removed when the worker exits (multiprocessing runs its finalizers; atexit does not run in its
            # children): workers started afresh each epoch leave no file behind.
            util.Finalize(None, _remove, args=(path,), exitpriority=0)
        except (OSError, ValueError, RuntimeError):
            pass

    def _worker_stacks(self) -> list[dict[str, Any]]:
        """The stacks of this rank's DataLoader workers (asked by signal; those that answer within 1 s)."""
        import multiprocessing

        children = [c.pid for c in multiprocessing.active_children() if c.pid]
        if not children or self.stacks is None or _DUMP_SIGNAL is None:
            return []
        for pid in children:
            try:
                os.kill(pid, _DUMP_SIGNAL)
            except OSError:
                pass
        time.sleep(1.0)
        found = []
        for pid in children:
            try:
                text = (self.stacks / f"rank-{self.env.rank}-worker-{pid}.txt").read_text()
            except OSError:
                continue
            blocks = [_FRAME.findall(b) for b in re.split(r"\n(?=(?:Current thread|Thread) 0x)", text)]
            loop = [b for b in blocks if any(name == "_worker_loop" for _, _, name in b)]
            frames = [[f, int(line), name, ""] for f, line, name in reversed((loop or blocks or [[]])[0])]
            if frames:
                found.append({"pid": pid, "frames": frames})
        return found

    def arm(self) -> None:
        """The loop starts: from now on a hang_timeout without progress is a hang, once the first step has
        finished (its compilation, DataLoader workers' start-up and first batches may take longer: the
        process group's own timeout covers that step)."""
        progress()
        self._armed_at = _BEATS[0]
        self._armed = True

    def disarm(self) -> None:
        self._armed = False

    # ------------------------------------------------------------------------------------ the thread

    def _watch(self) -> None:
        seen, since, orphaned_at = _BEATS[0], time.monotonic(), None
        while not self._stop.wait(self.poll_s):
            now = time.monotonic()
            if self.launcher is not None and orphaned_at is None and os.getppid() != self.launcher:
                orphaned_at = now
                self._orphaned()
            if _BEATS[0] != seen or not self._armed:
                seen, since = _BEATS[0], now
            # An orphan saving its checkpoint (a beat at the save's start) is not cut off mid-write: the
            # grace counts from its last sign of progress.
            if orphaned_at is not None and now - max(orphaned_at, since) > self.orphan_grace_s:
                _exit(ORPHAN_EXIT)
            elif (
                self.hang_timeout
                and self.env.is_distributed
                and seen != self._armed_at  # the first step after arming is not judged (see arm)
                and now - since >= self.hang_timeout
            ):
                self._hung(now - since)
                return

    def _orphaned(self) -> None:
        who = "torchrun's agent" if self.env.source == "torchrun" else "srun's step daemon"
        print(
            f"[rank {self.env.rank}] distrain: the launcher ({who}, PID {self.launcher}) is gone: this worker "
            f"saves a checkpoint and stops (exit status {ORPHAN_EXIT} if it cannot within "
            f"{self.orphan_grace_s:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        if self.on_orphan is not None:
            try:
                self.on_orphan()
            except Exception:  # the stop matters more than the note
                pass
        os.kill(os.getpid(), signal.SIGTERM)  # the loop's signal handling: agreed, saved, stopped

    def _hung(self, idle_s: float) -> None:
        STOPPING.set()
        try:
            report = self.report(idle_s)
            try:
                self._exchange(report)
            except Exception as exc:  # the store is gone: its host exited after the verdict, or before it
                if not getattr(exc, "after_verdict", False):
                    self._print(describe([report], self.env.world_size, self.hang_timeout or idle_s))
        finally:
            _exit(HANG_EXIT)  # whatever failed in the report, the hung rank never stays

    def _print(self, message: str) -> None:
        from distrain.errors import Hung, report_user_error

        hint = self.resume_hint() if self.resume_hint is not None else None
        report_user_error(Hung(message, hint))

    def report(self, idle_s: float) -> dict[str, Any]:
        """This rank's account: where its main thread is, in which collective, after which step."""
        frame = sys._current_frames().get(self._main)
        frames = [[f.filename, f.lineno, f.name, f.line or ""] for f in traceback.extract_stack(frame)] if frame else []
        workers = self._worker_stacks() if any(f[2] in ("_get_data", "_try_get_data") for f in frames) else []
        return {
            "workers": workers,
            "rank": self.env.rank,
            "host": os.uname().nodename,
            "pid": os.getpid(),
            "step": _BEATS[1],
            "idle_s": round(idle_s, 1),
            "collective": dist.IN_COLLECTIVE.name,
            "seq": dist.IN_COLLECTIVE.seq,
            "frames": frames,
        }

    def _exchange(self, report: dict[str, Any]) -> None:
        """Every rank's report through the rendezvous store; the rank that claims the verdict prints the
        message, then the others may exit."""
        import torch.distributed as tdist

        store = tdist.PrefixStore("distrain/watchdog", tdist.distributed_c10d._get_default_store())
        store.set(f"report/{self.env.rank}", json.dumps(report))
        keys = [f"report/{r}" for r in range(self.env.world_size)]
        grace = min(10.0, max(2.0, self.hang_timeout or 0.0))
        deadline = time.monotonic() + grace
        while not store.check(keys) and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.env.rank != 0:  # rank 0 prints when it can; another rank only if rank 0 stays silent
            waited = time.monotonic() + 2.0
            while not store.check(["claim"]) and time.monotonic() < waited:
                time.sleep(0.1)
        if store.add("claim", 1) != 1:
            deadline = time.monotonic() + grace
            try:
                while not store.check(["verdict"]) and time.monotonic() < deadline:
                    time.sleep(0.1)
            except Exception as exc:
                exc.after_verdict = True  # the printing rank hosted the store and is gone: it has printed
                raise
            return
        reports = [json.loads(store.get(k)) for k in keys if store.check([k])]
        self._print(describe(reports, self.env.world_size, self.hang_timeout or report["idle_s"]))
        store.set("verdict", "1")
        time.sleep(0.3)  # the others read the verdict before this rank (maybe the store's host) exits


def aborted_peer(stacks: Path, rank: int, world_size: int, exc: BaseException) -> str | None:
    """After a lost peer: when a peer's process aborted inside a collective (its stacks were dumped into
    `stacks`), the two collectives that met, in one message; else None."""
    for peer in range(world_size):
        if peer == rank:
            continue
        path = stacks / f"rank-{peer}.txt"
        try:
            if path.stat().st_mtime < _STARTED[0]:
                continue  # a dump left by an earlier attempt of the job, not this one's
            text = path.read_text()
        except OSError:
            continue
        if "Fatal Python error: Aborted" not in text:
            continue  # another death (a segfault, a kill): not gloo's abort on a mismatched collective
        frames = _main_thread_frames(text)
        if not frames:
            continue
        theirs = {"rank": peer, "step": None, "collective": _collective_of(frames), "seq": None, "frames": frames}
        failed = dist.IN_COLLECTIVE.failed
        outer = [[f.filename, f.lineno, f.name, f.line or ""] for f in traceback.extract_stack()[:-2]]
        inner = [[f.filename, f.lineno, f.name, f.line or ""] for f in traceback.extract_tb(exc.__traceback__)]
        mine = {
            "rank": rank,
            "step": _BEATS[1],
            "collective": failed[0] if failed else None,
            "seq": failed[1] if failed else None,
            "frames": outer + inner,
        }
        their_text, mine_text = where(theirs)[0], where(mine)[0]
        return (
            f"the ranks called different collectives: rank {peer} aborted (SIGABRT: gloo received a message of "
            f"another size than its collective expected) with its main thread in {their_text} and its signal "
            f"check (started asynchronously each step) in flight, while rank {rank} was in {mine_text}. They ran "
            "different numbers of steps, evaluation batches or exchanges" + _CAUSES
        )
    return None


_HELPERS = {
    "all_reduce_sum": "all_reduce",
    "all_reduce_min": "all_reduce",
    "all_reduce_max": "all_reduce",
    "all_true": "all_reduce",
    "agreed_signal": "all_reduce",
    "barrier": "barrier",
    "broadcast_tensor": "broadcast",
    "broadcast_object": "broadcast",
    "all_gather_object": "all_gather",
    "gather_object": "gather",
}


def _collective_of(frames: list[list[Any]]) -> str | None:
    return next((_HELPERS[f[2]] for f in reversed(frames) if _in_distrain(f[0]) and f[2] in _HELPERS), None)


def _main_thread_frames(dump: str) -> list[list[Any]]:
    """The training thread's frames (outermost first) in a faulthandler dump: the block of the thread the
    dump's first line names (Watchdog writes it), else the thread whose stack starts at a module's top level
    or at runpy's (python -m)."""
    named = re.match(r"main thread (0x[0-9a-f]+)", dump)
    blocks = re.split(r"\n(?=(?:Current thread|Thread) 0x)", dump)
    for block in blocks:
        found = _FRAME.findall(block)
        if not found:
            continue
        header = block.lstrip().split("\n", 1)[0]
        if named and named.group(1) in header:
            return [[f, int(line), name, ""] for f, line, name in reversed(found)]
    for block in blocks:
        found = _FRAME.findall(block)
        if found and found[-1][2] in ("<module>", "_run_module_as_main"):
            return [[f, int(line), name, ""] for f, line, name in reversed(found)]
    return []


def wait_for_the_watchdog(seconds: float = 60.0) -> None:
    """The main thread, after a collective failed while this rank's watchdog reports a hang: the watchdog
    ends the process (with the job's one message and exit status 5); a lost-peer line would only repeat it."""
    if STOPPING.is_set():
        time.sleep(seconds)


def _exit(code: int) -> None:
    """Flush, end this rank's own child processes (a DataLoader worker stuck in a deadlock would outlive
    it), and exit at once: the main thread may be blocked in a collective that never returns."""
    import multiprocessing

    for child in multiprocessing.active_children():
        try:
            os.kill(child.pid, signal.SIGKILL)
        except (OSError, TypeError):
            pass
    for handler in logging.getLogger("distrain").handlers:
        try:
            handler.flush()
        except Exception:
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# ----------------------------------------------------------------------------------- the message


def _in_distrain(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE + os.sep)


def _is_user(filename: str) -> bool:
    path = os.path.abspath(filename)
    return not (
        filename.startswith("<")
        or path.startswith(_PACKAGE + os.sep)
        or path.startswith(_LIBRARIES)
        or f"{os.sep}site-packages{os.sep}" in path
        or f"{os.sep}torch{os.sep}" in path
    )


def _short(filename: str) -> str:
    try:
        return os.path.relpath(filename) if not os.path.relpath(filename).startswith("..") else filename
    except ValueError:
        return filename


def _innermost(frames: list[list[Any]], test: Callable[[list[Any]], bool]) -> int:
    return next((i for i in range(len(frames) - 1, -1, -1) if test(frames[i])), -1)


def where(report: dict[str, Any]) -> tuple[str, str, bool]:
    """(where the rank is, what that usually means, whether it waits for the others)."""
    frames = report["frames"]
    user = _innermost(frames, lambda f: _is_user(f[0]))
    backward = _innermost(frames, lambda f: f[2] in ("_engine_run_backward", "run_backward"))
    loader_file = os.path.join("data", "dataloader.py")
    loader = _innermost(frames, lambda f: f[0].endswith(loader_file) and f[2] in ("_get_data", "_try_get_data"))
    step = f" of step {report['step'] + 1}" if report.get("step") is not None else ""
    if report["collective"] is not None:
        purpose = next((_PURPOSES[f[2]] for f in reversed(frames) if _in_distrain(f[0]) and f[2] in _PURPOSES), None)
        number = f" #{report['seq']}" if report.get("seq") is not None else ""
        text = f"{report['collective']}{number}" + (f" of {purpose}" if purpose else "")
        return text, "", True
    if backward > max(user, loader):
        return f"the gradient all-reduce{step} (DDP, inside backward)", "", True
    if loader > user:
        for worker in report.get("workers") or []:
            wframes = worker["frames"]
            inner = _innermost(wframes, lambda f: _is_user(f[0]))
            if inner >= 0 and not any(f[2] == "_worker_loop" for f in wframes[inner:]):
                filename, line, name, _ = wframes[inner]
                return (
                    f"waiting for its DataLoader worker PID {worker['pid']}, which is in `{name}` at "
                    f"{_short(filename)}:{line}",
                    "a DataLoader worker is stuck or deadlocked there (a lock taken before the fork, a hang in "
                    "the data set inside the worker)",
                    False,
                )
        return (
            f"waiting for its DataLoader workers{step.replace(' of', ' for')}",
            "a DataLoader worker is stuck or deadlocked (a lock taken before the fork, a hang in the data set "
            "inside the worker); data.num_workers=0 shows the data set's own stack",
            False,
        )
    if user >= 0:
        filename, line, name, _ = frames[user]
        at = f"{_short(filename)}:{line}"
        if name == "__getitem__":
            return (
                f"in your data set's `__getitem__` at {at}",
                "reading one sample is slow or stuck on this rank (storage, a lock, a remote file)",
                False,
            )
        if name in ("__iter__", "__next__"):
            return (
                f"in your data set's `{name}` at {at}",
                "this rank's stream is slow or stuck",
                False,
            )
        return (
            f"in your code, `{name}` at {at}",
            "your code is slow or stuck on this rank alone (a step that waits, a sleep, I/O)",
            False,
        )
    if frames:
        filename, line, name, _ = frames[-1]
        return f"in `{name}` at {_short(filename)}:{line}", "this rank is still computing (a slow node?)", False
    return "nowhere known (no stack)", "", False


_CAUSES = (
    " (a data set of a different length on some rank, a step that skips the gradient exchange on one rank, "
    "a collective under `if rank == 0`)"
)


def _ranks(ranks: list[int]) -> str:
    words = [str(r) for r in ranks]
    listed = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return ("rank " if len(ranks) == 1 else "ranks ") + listed


def describe(reports: list[dict[str, Any]], world_size: int, hang_timeout: float) -> str:
    """The one message: who is behind, where each rank is, and what that usually means."""
    reports = sorted(reports, key=lambda r: r["rank"])
    steps = sorted({r["step"] for r in reports})
    lines = [
        f"hang: no step finished for {hang_timeout:g} s (trainer.hang_timeout); last finished global step "
        + (str(steps[0]) if len(steps) == 1 else ", ".join(f"rank {r['rank']} {r['step']}" for r in reports))
    ]
    behind, waiting = [], {}
    for r in reports:
        text, meaning, waits = where(r)
        if waits:
            waiting.setdefault(text, []).append(r["rank"])
        else:
            behind.append((r, text, meaning))
    for r, text, meaning in behind:
        lines.append(f"  {_ranks([r['rank']])} is behind: {text}" + (f": {meaning}" if meaning else ""))
    if behind:
        for text, ranks in waiting.items():
            verb = "waits" if len(ranks) == 1 else "wait"
            lines.append(f"  {_ranks(ranks)} {verb} in {text}, for the rank(s) behind")
    elif len(waiting) > 1:
        met = [f"{_ranks(ranks)} in {text}" for text, ranks in waiting.items()]
        lines.append(
            "  the ranks called different collectives: "
            + "; ".join(met)
            + ". They ran different numbers of steps, evaluation batches or exchanges"
            + _CAUSES
        )
    else:
        for text, ranks in waiting.items():
            lines.append(
                f"  {_ranks(ranks)} wait in {text}: the same collective on every rank that reported; a rank or "
                "the network between them is stuck inside it"
            )
    missing = sorted(set(range(world_size)) - {r["rank"] for r in reports})
    if missing:
        lines.append(
            f"  {_ranks(missing)} sent no report: frozen (stopped, swapping, holding Python's lock in native code) "
            "or making progress while the others wait"
        )
    for r, _, _ in behind:
        frames = r["frames"]
        user = [f for f in reversed(frames) if _is_user(f[0])][:4]
        shown = user + [f for f in reversed(frames[-3:]) if f not in user]
        lines.append(f"  rank {r['rank']}'s stack (PID {r['pid']} on {r['host']}), your frames first, innermost first:")
        lines += [f"    {_short(f[0])}:{f[1]} in {f[2]}" + (f": {f[3]}" if f[3] else "") for f in shown]
        for worker in r.get("workers") or []:
            inner = [f for f in reversed(worker["frames"]) if _is_user(f[0])][:2] + worker["frames"][-2:][::-1]
            lines.append(f"  its DataLoader worker PID {worker['pid']}'s stack, innermost first:")
            lines += [f"    {_short(f[0])}:{f[1]} in {f[2]}" for f in inner]
    return "\n".join(lines)

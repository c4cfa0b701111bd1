"""distrain/loop/state.py without a run: `Progress` (where training stands) and the `Saver`'s cadence (every
N steps, every N epochs, the last epoch, and a step save skipped when the epoch's own save follows it at
the same global step). The trainer's loop is replayed here with the same calls, in the same order."""

from types import SimpleNamespace

import pytest

from distrain.checkpoint.saver import Saver
from distrain.config.schema import CheckpointConfig
from distrain.loop.state import Progress

CTX = SimpleNamespace(is_main=True, world_size=1, rank=0)


def saver(tmp_path, *, epochs, steps_per_epoch, **checkpoint):
    return Saver(
        CheckpointConfig(**checkpoint), tmp_path, CTX, epochs=epochs, steps_per_epoch=steps_per_epoch, sharded=False
    )


def replay(s, *, epochs, steps_per_epoch, stop_after=None, progress=None):
    """The saves Trainer.fit would make, as (kind, global step): after each step's advance, and after each
    epoch's end (the last epoch, or the one that stops early, is `last`)."""
    p = progress or Progress()
    saves = []
    for _epoch in range(p.epoch, epochs):
        for step in range(p.step_in_epoch, steps_per_epoch):
            p.advance(step_in_epoch=step + 1, skipped=False)
            if s.should_save_step(p):
                saves.append(("step", p.global_step))
        p.end_epoch()
        stopped = stop_after is not None and p.epoch == stop_after
        if s.should_save_epoch(p, last=p.epoch == epochs or stopped):
            saves.append(("epoch", p.global_step))
        if stopped:
            break
    assert not s.background  # nothing was written: the cadence alone
    return saves


def test_step_and_epoch_saves_each_global_step_once(tmp_path):
    # 20 steps an epoch, a step save every 5: the epoch-end steps are the epoch saves' (with the metrics).
    s = saver(tmp_path, epochs=2, steps_per_epoch=20, every_steps=5, every_epochs=1)
    assert replay(s, epochs=2, steps_per_epoch=20) == [
        ("step", 5),
        ("step", 10),
        ("step", 15),
        ("epoch", 20),
        ("step", 25),
        ("step", 30),
        ("step", 35),
        ("epoch", 40),
    ]


def test_a_step_save_at_an_epoch_end_without_an_epoch_save_is_kept(tmp_path):
    # Epoch saves every 2nd epoch of 3: epoch 1's end (step 10) has no epoch save, so the step save stays;
    # epoch 2's (step 20) and the last epoch's (step 30) have theirs.
    s = saver(tmp_path, epochs=3, steps_per_epoch=10, every_steps=10, every_epochs=2)
    assert replay(s, epochs=3, steps_per_epoch=10) == [("step", 10), ("epoch", 20), ("epoch", 30)]


def test_the_last_epoch_is_saved_whatever_every_epochs_says(tmp_path):
    s = saver(tmp_path, epochs=5, steps_per_epoch=4, every_epochs=3)
    assert replay(s, epochs=5, steps_per_epoch=4) == [("epoch", 12), ("epoch", 20)]
    # An early stop (after epoch 2 of 5) makes that epoch the last: saved.
    s = saver(tmp_path, epochs=5, steps_per_epoch=4, every_epochs=3)
    assert replay(s, epochs=5, steps_per_epoch=4, stop_after=2) == [("epoch", 8)]


def test_zero_turns_each_kind_of_save_off(tmp_path):
    s = saver(tmp_path, epochs=2, steps_per_epoch=6, every_steps=0, every_epochs=0)
    assert replay(s, epochs=2, steps_per_epoch=6) == []
    s = saver(tmp_path, epochs=2, steps_per_epoch=6, every_steps=3, every_epochs=0)
    assert replay(s, epochs=2, steps_per_epoch=6) == [("step", 3), ("step", 6), ("step", 9), ("step", 12)]
    s = saver(tmp_path, epochs=2, steps_per_epoch=6, every_steps=0, every_epochs=1)
    assert replay(s, epochs=2, steps_per_epoch=6) == [("epoch", 6), ("epoch", 12)]


def test_step_saves_count_global_steps_across_epochs(tmp_path):
    # 7 steps an epoch, a save every 5 global steps: 5, 10, 15, 20 (none at an epoch end: 7, 14, 21).
    s = saver(tmp_path, epochs=3, steps_per_epoch=7, every_steps=5, every_epochs=0)
    assert replay(s, epochs=3, steps_per_epoch=7) == [("step", 5), ("step", 10), ("step", 15), ("step", 20)]


def test_a_resumed_run_saves_what_the_uninterrupted_one_saves_next(tmp_path):
    whole = replay(saver(tmp_path, epochs=3, steps_per_epoch=20, every_steps=7), epochs=3, steps_per_epoch=20)
    # Resumed from the step-28 checkpoint (epoch 1, 8 steps of it trained).
    resumed = Progress()
    resumed.load_state_dict({"epoch": 1, "step_in_epoch": 8, "global_step": 28, "skipped_steps": 0})
    rest = replay(
        saver(tmp_path, epochs=3, steps_per_epoch=20, every_steps=7), epochs=3, steps_per_epoch=20, progress=resumed
    )
    assert rest == [save for save in whole if save[1] > 28] and rest[0] == ("step", 35)


# ------------------------------------------------------------------------------------------------ Progress


def test_progress_advances_by_optimizer_steps_and_counts_skipped_ones():
    p = Progress()
    p.advance(step_in_epoch=1, skipped=False)
    p.advance(step_in_epoch=2, skipped=True)  # a skipped step still uses up its batch
    assert (p.epoch, p.step_in_epoch, p.global_step, p.skipped_steps) == (0, 2, 2, 1)
    p.end_epoch()
    assert (p.epoch, p.step_in_epoch, p.global_step, p.skipped_steps) == (1, 0, 2, 1)
    p.advance(step_in_epoch=1, skipped=False)
    assert (p.epoch, p.step_in_epoch, p.global_step, p.skipped_steps) == (1, 1, 3, 1)


def test_progress_state_round_trips_and_loads_in_place():
    p = Progress(epoch=3, step_in_epoch=5, global_step=65, skipped_steps=2)
    state = p.state_dict()
    assert state == {"epoch": 3, "step_in_epoch": 5, "global_step": 65, "skipped_steps": 2, "ended_epoch_steps": 0}
    held = Progress()
    holder = SimpleNamespace(progress=held)  # as the trainer holds the state's Progress
    held.load_state_dict(dict(state, model={}, world_size=2))  # a whole checkpoint payload: the rest ignored
    assert holder.progress is held and held == p


def test_a_checkpoint_without_skipped_steps_loads_as_none_skipped():
    p = Progress(skipped_steps=4)
    p.load_state_dict({"epoch": 1, "step_in_epoch": 0, "global_step": 20})  # written before skip_step existed
    assert p == Progress(epoch=1, step_in_epoch=0, global_step=20, skipped_steps=0)


@pytest.mark.parametrize("missing", ["epoch", "step_in_epoch", "global_step"])
def test_a_state_without_a_position_is_refused(missing):
    state = {"epoch": 1, "step_in_epoch": 0, "global_step": 20}
    del state[missing]
    with pytest.raises(KeyError):
        Progress().load_state_dict(state)


def test_the_position_of_the_weights_is_the_epoch_and_its_steps_trained():
    p = Progress()
    for step in range(5):
        p.advance(step_in_epoch=step + 1, skipped=False)
    assert p.position() == (0, 5)  # mid-epoch: a step save's
    p.end_epoch()  # trainer.max_steps=5 ended the epoch after 5 of its steps
    assert (p.epoch, p.step_in_epoch) == (1, 0)  # the resume point
    assert p.position() == (0, 5)  # what was trained: not "epoch 1, step 0"
    resumed = Progress()
    resumed.load_state_dict(p.state_dict())
    assert resumed.position() == (0, 5)  # also right after a resume (a save before its first step)
    p.advance(step_in_epoch=1, skipped=False)
    assert p.position() == (1, 1)


def test_a_checkpoint_after_max_steps_mid_epoch_is_labelled_with_its_step(tmp_path):
    from helpers.runs import XOR, run_cli

    # configs/xor.yaml: 2500 samples in global batches of 128, 20 steps an epoch.
    result = run_cli("train", XOR, f"run.dir={tmp_path}", "trainer.max_steps=5", "log.plots=false")
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert "step-00000005.pt (epoch 0, step 5 of 20)" in out, out
    result = run_cli("train", XOR, f"run.dir={tmp_path / 'two'}", "trainer.epochs=2", "checkpoint.every_steps=15")
    out = result.stdout + result.stderr
    assert "step-00000015.pt (epoch 0, step 15 of 20)" in out and "step-00000040.pt (epoch 1, step 20 of 20)" in out

"""A user's stateful callback, named by import path in tests' configs (helpers.counting_callback:Counter)."""


class Counter:
    """Counts optimizer steps (checkpointed) and logs the count every `every` steps with run.log."""

    def __init__(self, every: int = 10):
        self.every, self.steps, self.saves, self.ended = every, 0, [], None

    def on_step_end(self, run):
        self.steps += 1
        if run.global_step % self.every == 0:
            run.log(counted=self.steps, counted_epoch=run.epoch)

    def on_save(self, run, path):
        self.saves.append(str(path))

    def on_train_end(self, run, result):
        self.ended = result.global_step

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]

"""User-facing errors: the CLI prints these without a traceback and exits non-zero.

A `UserError` is something the person running distrain can fix (a config key, a file, an environment
variable). Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """An error the user can fix (a config key, a file, a checkpoint, a launcher variable). `exit_code` is
    what the CLI exits with: 2, as for every user error (1 is left to bugs, which keep their traceback)."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nHINT: {self.hint}"


class ConfigError(UserError):
    """A bad config key or value. Raised before any training starts (exit status 2)."""

    exit_code = 2

    def __init__(self, key: str, problem: str, hint: str | None = None):
        super().__init__(f"config key '{key}': {problem}", hint)
        self.key = key


class EnvError(UserError):
    """Launcher variables (torchrun, SLURM) that are missing or contradict each other (exit status 2)."""

    exit_code = 2

    def __init__(self, variable: str, problem: str, hint: str | None = None):
        super().__init__(f"environment variable {variable}: {problem}", hint)
        self.variable = variable

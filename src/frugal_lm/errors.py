"""Errors that reach the user as one clear line and a non-zero exit, never as a traceback."""

from __future__ import annotations


class FrugalError(Exception):
    """A problem the user can fix (bad input, bad config, missing model). The CLI prints it and exits 2."""


class DataError(FrugalError):
    """Bad input data. The message names the file, the line and the field, and says what was expected."""

    def __init__(self, path: str, message: str, line: int | None = None, field: str | None = None):
        where = str(path)
        if line is not None:
            where += f":{line}"
        if field is not None:
            where += f" (field '{field}')"
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.field = str(path), line, field


class ConfigError(FrugalError):
    """A bad configuration value. The message names the key."""


class ModelError(FrugalError):
    """A model that cannot be resolved or loaded (unknown alias, missing folder, hub unreachable offline)."""

"""User-facing errors.

Every error a user can fix (bad config, missing data, missing checkpoint, numerical fault) is a
`UserError`. Launchers catch it and print its one-line message (which names the fix) and exit with
code 2, never a traceback from deep inside JAX.
"""


class UserError(Exception):
  """An error the user can fix; its message names the problem and the fix."""


class ConfigError(UserError, ValueError):
  """A config value is invalid (unknown name, out-of-range value, ...)."""


class DataError(UserError):
  """Data is missing or malformed (e.g. an unprepared TFDS dataset)."""


class CheckpointError(UserError):
  """A checkpoint is missing, corrupted or from another model/dataset."""


class NumericalError(UserError, FloatingPointError):
  """A NaN or inf appeared in a loss or in the parameters."""


class WorkdirBusyError(UserError):
  """Another process is working in the same workdir."""

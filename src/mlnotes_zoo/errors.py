"""The one error type for everything a user can cause, and the exit code it ends a run with.

Anything that a command line, a config value, a data file, a checkpoint or a weight file
can get wrong is raised as a :class:`ZooError` (or a subclass naming the kind of mistake)
whose message is one or two lines for the user as they are. ``train.py`` reports it in one
place (``train._exit``, for a mistake found on the command line, in the composed config or
during the run): ``error: <message>`` on rank 0, then exit with ``exit_code``; everything
else is a bug and keeps its traceback.

A leaf module: it imports nothing of the zoo.
"""

from __future__ import annotations

__all__ = ["ZooError", "UsageError"]


class ZooError(Exception):
    """A mistake in what the user gave (config, data, files); ``exit_code`` ends the run."""

    exit_code: int = 2  # 2: bad input, nothing was run (or nothing was lost)


class UsageError(ZooError, ValueError):
    """A wrong command line or config value: key, value and what is allowed."""

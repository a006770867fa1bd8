"""The one exception every part of the kit raises for bad input.

A ``UserError`` is a problem the user can fix (a missing folder, an unknown preset, a file in
the wrong format); its message is one line that says what to do. The kit's commands (the
demos, report.py, ...) print it as ``error: <message>`` and exit with status 1
(``kit.stopping``), never as a traceback.
"""


class UserError(Exception):
    """A problem with the user's input; the message is one line saying what to do."""


class DatasetFileError(UserError):
    """A dataset file is missing, truncated or corrupt; the message names it (one line)."""

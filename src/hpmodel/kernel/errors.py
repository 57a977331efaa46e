"""User-facing errors.

Every error a user can cause (a bad config key, a missing file, more devices than exist)
is raised as an :class:`HpmodelError` whose message is one line naming the cause and the
fix. The CLI prints it without a traceback and exits with status 2.
"""


class HpmodelError(Exception):
    """An error caused by the user's input; its message names the cause and the fix.

    Example::

        raise HpmodelError("data.path 'x.npz' does not exist: give an existing .npz file")
    """

    exit_code = 2


class ConfigError(HpmodelError):
    """A configuration key, type or value is wrong."""

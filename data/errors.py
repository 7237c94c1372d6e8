"""The one exception a stage raises for a user's mistake: it ends in one line and exit code 2.

It lives at the bottom layer (data/) so that data/, models/ and pipeline/ can all raise it."""


class UserError(Exception):
    """A bad input, missing file or bad config: reported as one clear line, never a traceback."""

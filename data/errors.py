"""The one exception a stage raises for a user's mistake: it ends in one line and exit code 2."""


class UserError(Exception):
    """A bad input, missing file or bad config: reported as one clear line, never a traceback."""


class ParityError(UserError):
    """An export that was written completely but drifts from the Keras model beyond tolerance."""

"""User-facing errors: one clear line, non-zero exit, no traceback wall."""


class UserError(Exception):
    """A problem the user can fix (bad config, missing data, malformed file).

    Its message is a single line; the entry point prints it and exits non-zero.
    Bugs raise anything else and keep their traceback.
    """

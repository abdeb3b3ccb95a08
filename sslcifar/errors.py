"""User errors: one clear line naming the problem and the fix, no traceback."""


class UserError(Exception):
    """A problem with the user's config, data or files (not a bug in sslcifar).

    Entrypoints turn it into `error: <message>` on stderr and exit status 2.
    """

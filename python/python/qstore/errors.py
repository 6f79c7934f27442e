"""The exceptions qstore raises. Every one is a :class:`qstore.Error`; the message is the library's (what,
where, and what to do)."""


class Error(Exception):
    """Base of every qstore error."""


class NotFound(Error, LookupError):
    """A store, calendar or market that does not exist."""


class CorruptFile(Error):
    """A store or cache file that breaks its format (the message names the file and the byte)."""


class ExpressionError(Error, ValueError):
    """An expression that does not parse or names an unknown field.

    ``expr`` is the text and ``pos`` the byte offset of the problem in it.
    """

    def __init__(self, message, expr=None, pos=None):
        super().__init__(message)
        self.expr = expr
        self.pos = pos

    def __reduce__(self):
        # Raised on a Dask worker, it travels to the client by pickle with its expression and position.
        return (type(self), (self.args[0], self.expr, self.pos))


class LockBusy(Error):
    """A writer lock another process holds, or a lease lost while writing."""


class ConfigError(Error):
    """A bad setting (qstore.json, ``QSTORE_*``) or an unreachable Redis."""


class InvalidArgument(Error, ValueError):
    """A bad argument: a name, date or frequency that cannot be used, or reversed dates."""


class LeftOutWarning(UserWarning):
    """An optional feature of a feature set that a query cannot give (no instrument has its fields), so the
    frame has no column for it: say ``$vwap`` for Alpha158's ``VWAP0``. ``warnings.simplefilter("error",
    qstore.LeftOutWarning)`` makes it an error."""

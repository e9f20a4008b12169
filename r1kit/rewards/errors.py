"""The rewards' errors, in a module of their own so that the registry and the catalog need not import
each other to raise or catch them."""


class UnknownRewardError(KeyError, ValueError):
    """A reward name that is neither registered nor an importable dotted path.

    Both a KeyError (it is a failed lookup) and a ValueError (it is a bad config value), so
    callers may catch either.
    """

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message, wrapping it in quotes.
        return str(self.args[0]) if self.args else ""

"""The one exception type for mistakes a user can fix; the CLI prints it as one line."""


class PartitaError(Exception):
    """Bad input or a bad request: the message says what is wrong and what to do."""

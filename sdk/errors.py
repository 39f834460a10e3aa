"""The one exception type for bad user input, shared by every layer."""


class UserError(ValueError):
    """Bad input from the user (an argument, a file, an array): the message says which input, what
    was expected and what arrived. The CLI prints it without a traceback; sessions stay usable."""

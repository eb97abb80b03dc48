"""`AivdError`: the base of every error aivd reports to its user as one line (a bad file, data set, config, model,
store or service answer). Code that can handle any of them, such as the CLI, catches this one class; each
subclass also keeps the built-in base (ValueError, RuntimeError) it has always had, so older callers still work.
Errors that are bugs stay ordinary exceptions and keep their tracebacks."""


class AivdError(Exception):
    pass

"""The project's own error types: each says what is wrong, where, and what to do."""


class MlicError(Exception):
    """Base class: the CLI prints these as one line and exits 1, without a traceback."""


class ConfigError(MlicError):
    """A config key, value or file is wrong."""


class DataError(MlicError):
    """A dataset file, annotation or image is wrong."""

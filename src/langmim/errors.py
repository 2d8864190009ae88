"""User-facing errors: the CLI prints their message as one line and exits with code 2."""


class LangmimError(Exception):
    """A mistake in the user's input (config, data path, checkpoint) with a clear message."""


class ConfigError(LangmimError):
    """An unknown config key or a value of the wrong type or outside the valid choices."""


class DataError(LangmimError):
    """A data set that is missing, empty or unreadable."""


class CheckpointError(LangmimError):
    """A checkpoint that is missing, truncated, foreign or incompatible with the config."""

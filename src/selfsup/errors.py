"""Errors every layer may raise: a bad option or setting, reported as one line (exit code 2)."""


class ConfigError(ValueError):
    """A bad option: the message is one line naming the option and what is valid."""

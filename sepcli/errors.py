"""Domain errors. Library code raises these; only the CLI turns them into messages and exit codes."""


class SepcliError(Exception):
    """Base class for every error a user can cause and fix. ``exit_code`` is what the CLI returns."""

    exit_code = 2


class ModelError(SepcliError):
    """The model cannot be found, loaded, or is not supported by the engine."""


class UnsupportedModelError(ModelError):
    """The model loads, but its architecture is not a RoPE decoder the engine knows."""


class InputError(SepcliError):
    """Bad user input: missing/empty/unreadable file, empty question, undecodable bytes."""


class ConfigError(SepcliError, ValueError):
    """Invalid sizes or option combinations (raised from config ``__post_init__``)."""


class ContextLimitError(SepcliError):
    """The input does not fit in the model's trained context for a method that needs it to."""


class CheckpointError(SepcliError):
    """A checkpoint is corrupt, or was written for another model or configuration."""


class DocCacheError(SepcliError):
    """A --doc-cache file is damaged, unwritable, or was written for another document or model."""

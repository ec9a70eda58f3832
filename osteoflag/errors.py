"""The exception hierarchy: one root, with transient and permanent kinds.

Library errors (pynetdicom, SQLAlchemy, onnxruntime, pydicom) are wrapped at the
module edge with ``raise ... from exc`` so callers only ever catch these.
"""


class OsteoflagError(Exception):
    """Root of every error osteoflag raises on purpose."""


class ConfigError(OsteoflagError):
    """The configuration file is missing, malformed, or names an unknown key."""


class UsageError(ConfigError):
    """A command asks for something it cannot do with what it was given (too few labelled
    images to judge, an output folder that exists): exit status 2 like a config error."""


class TransientError(OsteoflagError):
    """A failure that may succeed when retried (peer down, disk briefly full)."""


class DatabaseUnavailable(TransientError):
    """The database could not take a statement: a lock held past the busy timeout, a dropped
    connection (a PostgreSQL restart or fail-over). Nothing was changed; it clears by itself."""


class PermanentError(OsteoflagError):
    """A failure that retrying cannot fix (undecodable pixels, bad bundle)."""


class BundleError(ConfigError, PermanentError):
    """The model bundle is incomplete, tampered with or malformed: the configured
    ``model.bundle`` (or a command's ``--bundle``) is unusable, so exit status 2."""


class PixelDataError(PermanentError):
    """A dataset's pixels cannot be turned into a model input."""


class DeliveryError(TransientError):
    """A destination refused or could not receive a produced object."""


class ContextsRefused(DeliveryError):
    """A destination accepted the association but none of the presentation contexts proposed
    (PS3.8 9.3.3.2); ``permanent`` when it said it supports none of their abstract or transfer
    syntaxes, which retrying the same objects cannot change."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class TrainingError(PermanentError):
    """A training or adaptation run cannot go on (bad weights file, failed parity check, bad
    data); here rather than in the training package so runtime commands can raise it."""

"""Errors a user can act on. The CLI prints their message without a traceback."""


class LanceConceptsError(Exception):
    """Base class for expected, user-facing failures (bad input, missing weights, refused appends)."""


class WeightsUnavailableError(LanceConceptsError, RuntimeError):
    """Model weights could not be loaded (typically: offline and not in the hub cache)."""


class VocabularyError(LanceConceptsError, ValueError):
    """A concept vocabulary is empty, unreadable or otherwise unusable."""


class InputError(LanceConceptsError, ValueError):
    """Input data (embeddings, images, tables, queries) is malformed."""

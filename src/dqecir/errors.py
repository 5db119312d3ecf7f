"""Exceptions with enough context to act on: which file, which record, which field."""

from __future__ import annotations

from pathlib import Path


class DqecirError(Exception):
    """Base class of every error this package raises on bad input."""


class DataError(DqecirError):
    """A dataset file, record or image is missing or malformed.

    The message always names the file and, where one applies, the record (index or id) and
    the field, so that a user can open the file and fix it.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        record: object | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = message
        """The message without the location (for a reader who must not see server paths)."""
        self.file = str(file) if file is not None else None
        self.record = record
        self.field = field
        where = []
        if file is not None:
            where.append(f"file {file}")
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class PredictionsError(DataError):
    """A predictions (submission) file is malformed or does not match the annotations."""


class CheckpointError(DqecirError):
    """A checkpoint or index is missing, corrupted or does not match what loads it."""


class QueryError(DqecirError):
    """A search query that cannot be answered as given (empty text, ``k < 1``...)."""

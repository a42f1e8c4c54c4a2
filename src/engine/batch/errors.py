"""Errors of the batch jobs (`engine discover | score-batch | generate-extracts`, distributed train).

    BatchError            base; its message is meant for the person at the terminal
    ├── UsageError        the job is asked for something it cannot do as written: a mapping file
    │   │                 that does not parse or validate, a column the mapping names that the
    │   │                 extract lacks, an output directory that holds other files (exit 2)
    │   └── MappingError  the mapping file itself (names the file and the entry)
    └── DataError         the data does not fit the mapping or cannot be read: an unreadable
                          partition, a value of the wrong type (names file, column and row; exit 1)

Raised in Dask workers too: they are plain exceptions with a message only, so they pickle
back to the client unchanged.
"""

from __future__ import annotations


class BatchError(Exception):
    """Base of every error the batch jobs raise on purpose."""


class UsageError(BatchError):
    """The command, its mapping file or its output directory cannot work as written."""


class MappingError(UsageError):
    """The mapping file does not parse, or an entry in it is invalid."""


class DataError(BatchError):
    """A partition cannot be read, or a value in it does not fit the mapping."""

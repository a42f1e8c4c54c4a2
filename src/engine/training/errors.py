"""Errors of the training tools (`engine train | export | generate`).

    TrainingError                 base; its message is meant for the person at the terminal
    ├── DataError                 a training file is unreadable or has bad rows (names column + row)
    └── ExportError               a model cannot be exported to ONNX faithfully
        └── ParityError           ONNX Runtime and LightGBM disagree; nothing was written

These never reach gRPC clients, so they are not `engine.errors.EngineError`s.
"""

from __future__ import annotations


class TrainingError(Exception):
    """Base of every error the training tools raise on purpose."""


class DataError(TrainingError):
    """A data file cannot be used for training: missing column, bad value, invalid row."""


class ExportError(TrainingError):
    """The LightGBM model has something ONNX cannot reproduce (e.g. categorical splits)."""


class ParityError(ExportError):
    """ONNX Runtime's probabilities differ from LightGBM's beyond the tolerance."""

    def __init__(self, message: str, worst: list[tuple[int, float, float]]) -> None:
        super().__init__(message)
        #: (row index, LightGBM probability, ONNX Runtime probability), worst first
        self.worst = worst

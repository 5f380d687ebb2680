"""The one error type of the evaluation math (its own module so every other one can import it)."""

from __future__ import annotations

__all__ = ["EvaluationError"]


class EvaluationError(ValueError):
    """Bad input to an evaluation function: the message names the input and the fix."""

"""The one error type of the evaluation math (its own module so every other one can import it).

Tested by tests/attribution/evaluation/test_perturbation.py and tests/attribution/evaluation/test_removal.py.
"""

from __future__ import annotations

__all__ = ["EvaluationError"]


class EvaluationError(ValueError):
    """Bad input to an evaluation function: the message names the input and the fix."""

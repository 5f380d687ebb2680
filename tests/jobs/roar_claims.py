"""Checks that what jobs.roar prints claims only what its own printed numbers show (issue #27): the chance
line, the budget line and each cell's verdict are parsed back and each claim is tested against them."""

from __future__ import annotations

import re

from jobs.evaluation.roar_summary import AT_CHANCE, CHANCE_MARGIN, LEAKS, VALID_ABOVE, VALID_CHANCE

CHANCE = re.compile(r"chance: ([\d.]+) % \(1/(\d+) classes the model predicts\); majority class of the test images: "
                    r"([\d.]+) %")
BUDGET = re.compile(r"budget check: unmodified retrain ([\d.]+|-)(?: ± [\d.]+)? % vs checkpoint ([\d.]+|nan) % on the "
                    r"same test images: (.*)$")
CELL = re.compile(r"^\s+(\S+) t=\s*(\d+)\s+(\S+): ROAR ([\d.]+)(?: ± [\d.]+)?, mask only ([\d.]+|-)(?: ± [\d.]+)? "
                  r"\(p=(\S+)\): (.*)$")


def check_claims(text: str, tolerance: float = 3.0) -> dict:
    """Parse the printed verdicts and assert each claim agrees with the printed numbers; returns what was parsed."""
    lines = text.splitlines()
    chance_line = [m for m in map(CHANCE.search, lines) if m]
    assert chance_line, "no chance line printed"
    chance, k, majority = float(chance_line[0][1]), int(chance_line[0][2]), float(chance_line[0][3])
    assert abs(chance - 100 / k) < 0.051
    margin = 100 * CHANCE_MARGIN + 0.051  # printed to one decimal
    (budget,) = [m for m in map(BUDGET.search, lines) if m]
    unmodified = None if budget[1] == "-" else float(budget[1])
    checkpoint, verdict = float(budget[2]), budget[3]
    model_at_chance = checkpoint <= chance + margin or (unmodified is not None and unmodified <= chance + margin)
    if verdict.startswith("within"):
        assert not model_at_chance, verdict
        assert unmodified is not None and checkpoint - unmodified <= tolerance + 0.1, verdict
    if verdict.startswith("NOT VALID: the model is at chance"):
        assert checkpoint <= chance + margin + 0.1 or (unmodified is not None and unmodified <= chance + margin + 0.1)
    cells = []
    for m in filter(None, map(CELL.search, lines)):
        roar, mask, p, claim = float(m[4]), None if m[5] == "-" else float(m[5]), float(m[6]), m[7]
        cells.append({"method": m[1], "t": int(m[2]), "roar": roar, "mask": mask, "p": p, "verdict": claim})
        if model_at_chance:
            assert claim == AT_CHANCE, m[0]
            continue
        assert claim != AT_CHANCE, m[0]
        if claim == VALID_CHANCE:
            assert mask is not None and mask <= chance + margin, m[0]
        elif claim == VALID_ABOVE:
            assert mask is not None and mask > chance + 100 * CHANCE_MARGIN - 0.051 and p < 0.05 and roar >= mask - 0.1, m[0]
        elif claim == LEAKS:
            assert mask is not None and mask > chance + 100 * CHANCE_MARGIN - 0.051 and not p < 0.05, m[0]
    return {"chance": chance, "k": k, "majority": majority, "unmodified": unmodified, "checkpoint": checkpoint,
            "budget": verdict, "cells": cells, "model_at_chance": model_at_chance}

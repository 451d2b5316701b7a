"""The identification round trip of the README, on LFW, through the CLI with the default detector."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_lfw_round_trip_through_the_cli(shared_data):
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "round_trip.py"), "--lfw", str(shared_data / "lfw" / "images"),
         "--people", "20", "--json", "--sweep"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["enrolled_people"] == 20 and record["strangers"] == 20
    assert record["enrolled_faces"] >= 36
    # The goal's first half, which the shipped model meets (1.00 with the Haar default). The second half,
    # 0.80 of strangers unknown, is not met at the default threshold (0.30); the README reports both.
    assert record["rank1"] >= 0.9
    # Both halves are met at the stricter threshold the README suggests for open sets (1.00 / 0.85).
    at_suggested = next(row for row in record["sweep"] if abs(row["threshold"] - 0.6) < 1e-9)
    assert at_suggested["rank1"] >= 0.9 and at_suggested["strangers_unknown"] >= 0.8
    # Raising the threshold can only turn answers into `unknown`.
    sweep = record["sweep"]
    assert [row["threshold"] for row in sweep] == sorted(row["threshold"] for row in sweep)
    assert all(a["rank1"] >= b["rank1"] and a["strangers_unknown"] <= b["strangers_unknown"]
               for a, b in zip(sweep, sweep[1:]))

"""The identification round trip of the README, on LFW, through the CLI with the default detector."""

from __future__ import annotations

import json
import subprocess
import sys


def test_lfw_round_trip_through_the_cli(shared_data, tool_script):
    result = subprocess.run(
        [sys.executable, tool_script("round_trip"), "--lfw", str(shared_data / "lfw" / "images"),
         "--people", "20", "--json", "--sweep"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["enrolled_people"] == 20 and record["strangers"] == 20
    assert record["enrolled_faces"] >= 36
    # Both halves of the goal at the default identify threshold, which the model card sets at a false
    # accept rate of 5e-3 on LFW's different-person pairs.
    assert record["rank1"] >= 0.9
    assert record["strangers_unknown"] >= 0.8
    # Raising the threshold can only turn answers into `unknown`.
    sweep = record["sweep"]
    assert [row["threshold"] for row in sweep] == sorted(row["threshold"] for row in sweep)
    assert all(a["rank1"] >= b["rank1"] and a["strangers_unknown"] <= b["strangers_unknown"]
               for a, b in zip(sweep, sweep[1:]))

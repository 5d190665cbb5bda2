"""Running a training script's ``main()`` in the test process, as its command line would (the recipe tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

SCRIPTS = str(Path(__file__).resolve().parents[1] / "scripts")
if SCRIPTS not in sys.path:  # the scripts import their siblings (training_log) as top-level modules
    sys.path.insert(0, SCRIPTS)


def run_script(script, monkeypatch, *argv) -> None:
    """``script.main()`` with ``argv`` (each item str()-ed) as its arguments."""
    monkeypatch.setattr(sys, "argv", [script.__file__, *map(str, argv)])
    threads = torch.get_num_threads()
    try:
        script.main()
    finally:  # the scripts set their own thread count: leave the test process as it was
        torch.set_num_threads(threads)

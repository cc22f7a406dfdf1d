"""scripts/check_gpu.sh, the one-command GPU check: valid bash, and on a machine without CUDA
one verdict line saying so, exit 1, nothing else started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_gpu.sh"


def test_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA here: the script runs for real")
def test_without_cuda_says_so_and_stops(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out"),
                               "PY": sys.executable})
    assert proc.returncode == 1
    assert proc.stdout.strip() == ("FAIL cuda: torch.cuda.is_available() is False on this machine "
                                   "(nothing else run)")
    assert not any((tmp_path / "out").iterdir())

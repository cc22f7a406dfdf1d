"""`pip install .` (not editable): the package, its configs and the console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_configs_and_console_script_trains_from_any_directory(tmp_path):
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(REPO)], check=True, capture_output=True, cwd=tmp_path)
    wheel = next(wheels.glob("mlnotes_zoo-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n.removeprefix("mlnotes_zoo/configs/") for n in names
               if n.startswith("mlnotes_zoo/configs/") and n.endswith(".yaml")}
    in_repo = {str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("*.yaml")}
    assert shipped == in_repo

    subprocess.run([*pip, "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    script = target / "bin" / "mlnotes-zoo-train"
    assert script.is_file()
    assert (target / "bin" / "mlnotes-zoo-eval").is_file()
    assert (target / "bin" / "mlnotes-zoo-predict").is_file()
    assert (target / "bin" / "mlnotes-zoo-export").is_file()
    assert {"eval.yaml", "predict.yaml", "export.yaml"} <= shipped
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = subprocess.run(
        [sys.executable, "-c", "import mlnotes_zoo, mlnotes_zoo.config as c; "
         "print(mlnotes_zoo.__file__); print(c.config_dir())"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert all(line.startswith(str(target)) for line in probe.stdout.split())

    out = subprocess.run(
        [sys.executable, str(script), "model=vae", "trainer.max_epochs=1",
         "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
         "+trainer.limit_test_batches=1", "callbacks=none", "logger=none"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (metrics,) = elsewhere.glob("outputs/vae/*/metrics.json")
    assert "test/nll_iwae" in json.loads(metrics.read_text())["metrics"]

    bad = subprocess.run([sys.executable, str(script), "model=nosuch"], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "vae" in bad.stderr and "Traceback" not in bad.stderr

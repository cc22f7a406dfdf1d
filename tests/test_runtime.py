"""runtime.threads (configs/train.yaml, mlnotes_zoo.runtime): the thread count reaches torch in
the process that trains; a model config's own value, the command line over it, bad values
refused in one line before anything runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mlnotes_zoo.config import compose, config_dir, group_options
from mlnotes_zoo.errors import UsageError
from mlnotes_zoo.runtime import apply_runtime
from mlnotes_zoo.validation import validate_config

REPO = Path(__file__).resolve().parents[1]
TINY = ["trainer.accelerator=cpu", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1", "trainer.enable_model_summary=false", "test=false",
        "logger=none", "callbacks=none"]

# Three tiny trainings in one process, each followed by what torch itself reports there.
_PROBE = """
import json, sys, torch
from mlnotes_zoo.train import cli
seen = []
for overrides in json.loads(sys.argv[1]):
    cli(overrides)
    seen.append(torch.get_num_threads())
print(json.dumps(seen))
"""


@pytest.mark.slow
def test_the_thread_count_reaches_torch_in_the_training_process(tmp_path):
    one_thread = [m for m in group_options("model")
                  if OmegaConf.select(OmegaConf.load(config_dir() / "model" / f"{m}.yaml"),
                                      "runtime.threads") == 1]
    assert one_thread, "no model config sets runtime.threads: 1"
    model = "gpt" if "gpt" in one_thread else one_thread[0]
    tiny = TINY
    runs = [
        ["model=vae", *tiny, f"hydra.run.dir={tmp_path}/auto"],  # auto: OMP_NUM_THREADS below
        [f"model={model}", *tiny, f"hydra.run.dir={tmp_path}/model"],  # the model's own: 1
        [f"model={model}", "runtime.threads=3", *tiny, f"hydra.run.dir={tmp_path}/cli"],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HYDRA_FULL_ERROR": "0"}
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(runs)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [2, 1, 3]


@pytest.mark.parametrize("value, expected", [
    ("0", "runtime.threads=0: must be an integer >= 1 or 'auto'"),
    ("-2", "runtime.threads=-2: must be"),
    ("two", "runtime.threads='two': must be"),
    ("1.5", "runtime.threads=1.5: must be"),
])
def test_a_bad_thread_count_is_refused_in_one_line(run_cli, tmp_path, value, expected):
    code, err = run_cli(f"runtime.threads={value}", f"hydra.run.dir={tmp_path}/run")
    assert code == 2
    assert err.startswith(f"error: {expected}"), err
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_an_unknown_runtime_key_names_the_valid_ones(run_cli, tmp_path):
    code, err = run_cli("+runtime.thread=2", f"hydra.run.dir={tmp_path}/run")
    assert code == 2 and "runtime.thread" in err and "threads" in err, err
    with pytest.raises(UsageError, match="valid keys for runtime: threads"):
        apply_runtime({"thread": 2})


def test_the_python_api_checks_the_value_too():
    # train.main(cfg) without the CLI: the same annotation refuses it
    with pytest.raises(UsageError, match=r"runtime.threads=0: must be an integer >= 1"):
        apply_runtime({"threads": 0})
    with pytest.raises(UsageError, match=r"runtime.threads=true: must be"):
        apply_runtime({"threads": True})


def test_auto_and_null_leave_torch_alone():
    import torch

    before = torch.get_num_threads()
    assert apply_runtime({"threads": "auto"}) == before
    assert apply_runtime({"threads": None}) == before
    assert apply_runtime(None) == before
    validate_config(compose(["runtime.threads=null"]))
    validate_config(compose(["runtime.threads=auto"]))
    validate_config(compose(["runtime.threads=16"]))


def test_model_configs_that_set_threads_are_overridable():
    for model in group_options("model"):
        own = OmegaConf.select(OmegaConf.load(config_dir() / "model" / f"{model}.yaml"),
                               "runtime.threads")
        cfg = compose([f"model={model}"])
        assert cfg.runtime.threads == (own if own is not None else "auto"), model
        if own is not None:  # a trainer choice keeps it, the command line beats it
            assert compose([f"model={model}", "trainer=ddp"]).runtime.threads == own
            assert compose([f"model={model}", "runtime.threads=2"]).runtime.threads == 2
    assert (REPO / "configs" / "train.yaml").read_text().count("threads: auto") == 1

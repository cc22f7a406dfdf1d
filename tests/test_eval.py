"""eval.py: a checkpoint's test metrics on its own data, or on other data only when it fits.

A tiny odenet run is trained once through the real ``train.py`` entry point (in-process);
``eval.py`` of its best checkpoint must give the test metrics train.py wrote (the same code
path and data: ODE-Net's evaluation is deterministic), both from the run dir's saved
overrides and from the checkpoint's own hyper-parameters once it is moved out of its run
dir. A checkpoint on data of another image size or parity-vector length is refused in one
line, exit code 2, before any run dir is made.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mlnotes_zoo.config import compose

TINY = ["model=odenet", "model.net.channels=8", "data.batch_size=64",
        "trainer.accelerator=cpu", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=2",
        "trainer.enable_model_summary=false", "trainer.enable_progress_bar=false",
        "logger=csv", "callbacks.pictures=null"]


@pytest.fixture(scope="module")
def entry_points():
    """``run(cli, *overrides)`` -> (exit code, stdout + stderr): an entry point in-process,
    logging and Hydra put back afterwards."""
    from mlnotes_zoo.train import _FILE_LOG, _OWN_CONSOLE_LOGGERS

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    argv = sys.argv

    def _run(cli, *overrides: str, capture) -> tuple[int, str]:
        sys.argv = ["eval.py"]
        code = 0
        try:
            cli(list(overrides))
        except SystemExit as exit_info:
            code = exit_info.code
        finally:
            GlobalHydra.instance().clear()
        out = capture.readouterr()
        return code, out.out + out.err

    yield _run
    sys.argv = argv
    root.handlers[:], root.level = handlers, level
    for name in [*_OWN_CONSOLE_LOGGERS, _FILE_LOG.name]:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            logger.removeHandler(handler)
            handler.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, entry_points) -> Path:
    """The run dir of a tiny odenet run of train.py."""
    from mlnotes_zoo.train import cli

    run_dir = tmp_path_factory.mktemp("odenet") / "run"

    class _NoCapture:
        @staticmethod
        def readouterr():
            return type("Out", (), {"out": "", "err": ""})()

    code, _ = entry_points(cli, *TINY, f"hydra.run.dir={run_dir}", capture=_NoCapture)
    assert code == 0 and (run_dir / "metrics.json").is_file()
    return run_dir


def _one_line_exit_2(code: int, out: str) -> str:
    lines = [line for line in out.strip().splitlines() if not line.startswith("Seed set")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), out
    return lines[0]


def test_eval_reproduces_the_test_metrics_of_the_run(trained, tmp_path, entry_points, capfd):
    from mlnotes_zoo.evaluate import cli

    trained_report = json.loads((trained / "metrics.json").read_text())
    best = trained_report["checkpoint"]
    # limit_test_batches given again (plainly: the run added it with +) wins over the run's
    code, out = entry_points(cli, f"ckpt_path={best}", "trainer.limit_test_batches=2",
                             f"hydra.run.dir={tmp_path / 'eval'}", capture=capfd)
    assert code == 0, out
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report.keys() >= trained_report.keys() and report["checkpoint"] == best
    assert report["model"] == "odenet" and report["data"] == "digits"
    assert report["epochs"] == trained_report["epochs"] == 1
    assert set(report["metrics"]) == set(trained_report["metrics"]) >= {"test/acc", "test/loss"}
    for name, value in trained_report["metrics"].items():
        assert report["metrics"][name] == pytest.approx(value, rel=1e-6, abs=1e-7), name
    # the run's overrides, replayed in front of the command line's
    replayed = yaml.safe_load((tmp_path / "eval" / ".hydra" / "overrides.yaml").read_text())
    run_own = [a for a in TINY if not a.startswith("+trainer.limit_test_batches")]
    assert replayed[:len(run_own)] == run_own and f"ckpt_path={best}" in replayed
    assert "++trainer.limit_test_batches=2" in replayed

    # moved out of its run dir: composed from the checkpoint's hyper-parameters; the same
    # test batches (+trainer.limit_test_batches=2) give the same metrics
    moved = tmp_path / "moved.ckpt"
    shutil.copy(best, moved)
    code, out = entry_points(cli, f"ckpt_path={moved}", "+trainer.limit_test_batches=2",
                             "data.batch_size=64", f"hydra.run.dir={tmp_path / 'moved'}",
                             capture=capfd)
    assert code == 0, out
    again = json.loads((tmp_path / "moved" / "metrics.json").read_text())
    replayed = yaml.safe_load((tmp_path / "moved" / ".hydra" / "overrides.yaml").read_text())
    assert replayed[0] == "model=odenet" and "model.net.channels=8" in replayed
    for name, value in trained_report["metrics"].items():
        assert again["metrics"][name] == pytest.approx(value, rel=1e-6, abs=1e-7), name


def test_a_checkpoint_on_data_of_another_image_size_is_refused(trained, tmp_path,
                                                                entry_points, capfd):
    from mlnotes_zoo.evaluate import cli

    best = json.loads((trained / "metrics.json").read_text())["checkpoint"]
    code, out = entry_points(cli, f"ckpt_path={best}", "data.image_size=16",
                             f"hydra.run.dir={tmp_path / 'eval'}", capture=capfd)
    line = _one_line_exit_2(code, out)
    assert line == (f"error: {best} does not fit data=digits: model.net.in_shape is "
                    "[1, 16, 16] for this data but [1, 8, 8] in the checkpoint; use the data the "
                    "model was trained on (or a data config with the same values)")
    assert not (tmp_path / "eval").exists()


def _untrained_run(run_dir: Path, overrides: list[str]) -> Path:
    """A run dir as train.py leaves it, holding the untrained module of ``overrides``."""
    import pytorch_lightning as pl

    cfg = compose(overrides)
    module = instantiate(cfg.model, _convert_="all")
    checkpoint = {"epoch": 0, "global_step": 0, "pytorch-lightning_version": pl.__version__,
                  "state_dict": module.state_dict(),
                  "hyper_parameters": OmegaConf.to_container(OmegaConf.create(
                      dict(module.hparams)))}
    module.on_save_checkpoint(checkpoint)
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    torch.save(checkpoint, run_dir / "checkpoints" / "last.ckpt")
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("model, data, words", [
    ("pondernet", "data.n_elems=8", "model.net.in_features is 8 for this data but 16"),
    ("ctc", "data.vocab=abcdef", "model.net.vocab is abcdef for this data but 0123456789abcdef"),
])
def test_a_checkpoint_on_data_of_another_vocabulary_or_size_is_refused(
        tmp_path, entry_points, capfd, model, data, words):
    from mlnotes_zoo.evaluate import cli

    ckpt = _untrained_run(tmp_path / "run", [f"model={model}"])
    code, out = entry_points(cli, f"ckpt_path={ckpt}", data,
                             f"hydra.run.dir={tmp_path / 'eval'}", capture=capfd)
    assert words in _one_line_exit_2(code, out)
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("args, words", [
    ([], "eval.py needs ckpt_path=<file.ckpt>"),
    (["ckpt_path=/no/such.ckpt"], "ckpt_path=/no/such.ckpt: no such checkpoint file"),
    (["ckpt_path={ckpt}", "model=vae"], "remove model="),
])
def test_a_command_line_without_a_usable_checkpoint_is_one_line(
        trained, tmp_path, entry_points, capfd, args, words):
    from mlnotes_zoo.evaluate import cli

    best = json.loads((trained / "metrics.json").read_text())["checkpoint"]
    code, out = entry_points(cli, *[a.format(ckpt=best) for a in args], capture=capfd)
    assert words in _one_line_exit_2(code, out)


class _RunsCode:
    """Unpickling this calls ``marker.touch()``: what weights_only loading must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("entry", ["evaluate", "predict"])
def test_a_checkpoint_whose_pickle_runs_code_is_refused_unopened(tmp_path, entry_points,
                                                                   capfd, entry):
    import importlib

    marker = tmp_path / "ran"
    hostile = tmp_path / "run" / "checkpoints" / "last.ckpt"
    hostile.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "hyper_parameters": {"net": {"name": "vae"}},
                "payload": _RunsCode(marker)}, hostile)
    cli = importlib.import_module(f"mlnotes_zoo.{entry}").cli
    code, out = entry_points(cli, f"ckpt_path={hostile}", capture=capfd)
    assert "refused to load" in _one_line_exit_2(code, out)
    assert not marker.exists()


def test_a_run_dir_whose_overrides_ask_for_more_than_values_is_refused(tmp_path, entry_points,
                                                                         capfd):
    # the run dir beside a checkpoint is data: its overrides are held as resume= holds them
    from mlnotes_zoo.evaluate import cli

    ckpt = _untrained_run(tmp_path / "run", ["model=kmeans"])
    marker = tmp_path / "ran"
    (tmp_path / "run" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        ["model=kmeans", "+model.net._target_=pathlib.Path.touch",
         f"+model.net.self={marker}"]))
    code, out = entry_points(cli, f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}",
                             capture=capfd)
    assert "refusing '+model.net._target_=pathlib.Path.touch'" in _one_line_exit_2(code, out)
    assert not marker.exists() and not (tmp_path / "eval").exists()

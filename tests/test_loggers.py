"""The loggers a team already uses: ``logger=mlflow`` (a local file store in the run dir),
``logger=wandb`` (offline) and ``logger=many`` (CSV + TensorBoard + MLflow).

The MLflow run is real (the ``mlflow`` package the lock file installs): a tiny VAE run, then
the store is read back with MLflow's own client, as a user browsing it would see it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mlnotes_zoo.config import compose
from mlnotes_zoo.errors import UsageError
from mlnotes_zoo.validation import check_runnable, validate_config

TINY_VAE = ["model=vae", "model.net.hidden=32", "model.net.latent_dim=4", "data.batch_size=32"]


@pytest.mark.parametrize("option, names", [
    ("mlflow", {"mlflow"}), ("wandb", {"wandb"}), ("many", {"csv", "tensorboard", "mlflow"})])
def test_each_logger_config_composes_and_validates(make_cfg, tmp_path, option, names):
    cfg = make_cfg("model=vae", f"logger={option}")
    assert set(cfg.logger) == names
    validate_config(cfg)
    if "mlflow" in names:
        assert cfg.logger.mlflow.save_dir == f"{tmp_path}/mlruns"  # the run dir: offline
        assert cfg.logger.mlflow.tracking_uri is None and cfg.logger.mlflow.run_name == "vae"
    if "wandb" in names:
        assert cfg.logger.wandb.offline is True and cfg.logger.wandb.save_dir == str(tmp_path)


def test_mlflow_run_holds_params_metrics_and_pictures(make_cfg, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from mlnotes_zoo.train import main

    # main opts in to MLflow's file store (MLFLOW_ALLOW_FILE_STORE): unset again afterwards
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    cfg = make_cfg(*TINY_VAE, "logger=many")
    metrics = main(cfg)

    client = MlflowClient(f"file:{tmp_path}/mlruns")
    experiment = client.get_experiment_by_name("mlnotes-zoo")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "vae" and run.info.status == "FINISHED"
    # the resolved config: the network's kwargs, data, trainer, seed (and Lightning's own)
    params = run.data.params
    assert params["model/net/name"] == "vae" and params["model/net/latent_dim"] == "4"
    assert params["data/batch_size"] == "32" and params["trainer/max_epochs"] == "1"
    assert params["seed"] == "42" and params["beta"] == "1.0"
    assert {"val/loss", "test/loss"} <= set(run.data.metrics)
    assert run.data.metrics["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-6)
    history = client.get_metric_history(run.info.run_id, "val/loss")
    assert len(history) == 1  # one validation epoch

    # the pictures of the run dir are the run's artifacts, file for file
    written = sorted(p.name for p in (tmp_path / "pictures").iterdir())
    assert any("_epoch000" in name for name in written), written
    logged = sorted(Path(a.path).name for a in client.list_artifacts(run.info.run_id, "pictures"))
    assert logged == written
    # the other loggers of logger=many wrote as before
    assert (tmp_path / "csv" / "metrics.csv").is_file()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_wandb_without_the_package_is_one_line_saying_what_to_install(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    code, err = run_cli(*TINY_VAE, "logger=wandb", f"hydra.run.dir={run_dir}")
    assert code == 2, err
    assert err == ("error: logger.wandb (WandbLogger) needs the wandb package, which is not "
                   "installed: pip install wandb"), err
    assert not run_dir.exists()


def test_mlflow_without_the_package_names_what_to_install(monkeypatch):
    cfg = compose(["logger=many"])
    check_runnable(cfg)  # installed here
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else find_spec(name, *a))
    with pytest.raises(UsageError, match=r"^logger.mlflow \(MLFlowLogger\) needs the mlflow "
                                         r"package, .*: pip install mlflow-skinny$"):
        check_runnable(cfg)

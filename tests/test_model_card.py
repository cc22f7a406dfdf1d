"""MODEL_CARD.md: every figure in a run dir's card is the run's own (mlnotes_zoo/model_card.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from mlnotes_zoo.model_card import CARD_NAME, read_model_card

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One tiny VAE run (2 epochs of 2 batches), trained and tested by train.main."""
    from conftest import train_in

    return train_in(tmp_path_factory.mktemp("card_run"), "model=vae", "trainer.max_epochs=2",
                    "model.net.hidden=32", "model.net.latent_dim=3", "model.iwae_samples=8")


def test_card_metrics_are_those_of_metrics_json(run_dir):
    card = read_model_card(run_dir / CARD_NAME)
    report = json.loads((run_dir / "metrics.json").read_text())
    assert card["test_metrics"] == report["metrics"]  # exactly, every key
    assert {"test/loss", "test/nll_iwae"} <= set(card["test_metrics"])
    assert card["epochs"] == report["epochs"] == 2
    # the Markdown table shows the same numbers
    text = (run_dir / CARD_NAME).read_text()
    for name, value in report["metrics"].items():
        assert f"| `{name}` | {value:.6g} |" in text


def test_card_checkpoint_is_the_tested_file_and_its_sha256_is_recomputed(run_dir):
    card = read_model_card(run_dir / CARD_NAME)
    report = json.loads((run_dir / "metrics.json").read_text())
    ckpt = run_dir / card["checkpoint"]
    assert ckpt.resolve() == Path(report["checkpoint"]).resolve()
    assert ckpt.name.startswith("best-epoch")
    # sha256 by coreutils, not by the code that wrote the card
    sha = subprocess.run(["sha256sum", str(ckpt)], capture_output=True, text=True,
                         check=True).stdout.split()[0]
    assert card["checkpoint_sha256"] == sha
    assert card["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert (card["checkpoint_metric"], card["checkpoint_mode"]) == ("val/loss", "min")


def test_card_names_model_data_config_and_commit(run_dir):
    card = read_model_card(run_dir / CARD_NAME)
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert card["model"] == "vae" and card["network"]["latent_dim"] == 3
    assert card["module"] == "mlnotes_zoo.lit.vae.LitVAE"
    assert card["data"] == "mlnotes_zoo.data.digits.DigitsDataModule"
    assert card["data_config"] == resolved["data"]
    assert {"val_size", "test_size", "split_seed"} <= set(card["data_config"])
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
    if head:  # a git checkout (CI clones one)
        assert card["commit"].split("+")[0] == head
    text = (run_dir / CARD_NAME).read_text()
    body = text.split("## Resolved config", 1)[1].split("```yaml\n", 1)[1].split("\n```", 1)[0]
    assert yaml.safe_load(body) == resolved  # the card's config is the run's, resolved
    assert "python train.py" in text and "model.net.latent_dim=3" in text


def test_export_carries_the_runs_card(run_dir, tmp_path):
    from safetensors import safe_open

    from mlnotes_zoo.export import CARD_KEY, export_checkpoint

    report = json.loads((run_dir / "metrics.json").read_text())
    out = export_checkpoint(report["checkpoint"], "safetensors", tmp_path / "vae.safetensors")
    with safe_open(str(out.path), framework="pt") as f:
        text = f.metadata()[CARD_KEY]
    assert text == (run_dir / CARD_NAME).read_text()
    assert read_model_card(text)["test_metrics"] == report["metrics"]


def test_reading_a_file_without_front_matter_is_refused(tmp_path):
    path = tmp_path / CARD_NAME
    path.write_text("# just markdown\n")
    with pytest.raises(ValueError, match="no YAML front matter"):
        read_model_card(path)

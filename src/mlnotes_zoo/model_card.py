"""``MODEL_CARD.md``: what a run dir's checkpoint is, in one file a person or a program reads.

Every run dir gets one after training and testing (:func:`write_model_card`, called by
``train.py``); ``export.py`` carries the same text in the exported file's metadata
(safetensors metadata, ONNX ``metadata_props``, a ``torch.export`` archive's extra file).

The card follows Hugging Face's model cards: a YAML front matter block with the facts a
program needs (model, data, metric, checkpoint and its sha256, commit, test metrics), then
Markdown for a person: the model, the data and its split, the metric and how it was measured,
the test metrics, the command that reproduces the run and the resolved config. Every figure
in it is read from the run (the metrics are those of ``metrics.json``); nothing is typed in.

A leaf of the zoo apart from :func:`mlnotes_zoo.weights.atomic_path` (the file is written
by rename, so a crash never leaves half a card); Lightning is not needed.
"""

from __future__ import annotations

import hashlib
import inspect
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ModelCard", "write_model_card", "read_model_card", "render", "file_sha256",
           "git_commit", "CARD_NAME"]

CARD_NAME = "MODEL_CARD.md"
_FENCE = "---"


@dataclass
class ModelCard:
    """The facts of a card; :func:`render` turns them into ``MODEL_CARD.md``'s text."""

    model: str                       # registry name of the network
    network: dict[str, Any]          # its registry spec {"name": ..., **kwargs}
    module: str                      # the LightningModule that trained it
    module_doc: str                  # that module's one-line description (what it optimises)
    data: str                        # the DataModule's class
    data_doc: str                    # its one-line description
    data_config: dict[str, Any]      # the data node of the resolved config (split sizes, seed)
    checkpoint: str | None           # the checkpoint the metrics belong to (relative to the run)
    checkpoint_sha256: str | None
    checkpoint_metric: str | None    # the validation metric that picked it
    checkpoint_mode: str | None      # min | max
    epochs: int | None
    commit: str
    version: str
    metrics: dict[str, float] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def front_matter(self) -> dict[str, Any]:
        return {
            "model": self.model, "network": self.network, "module": self.module,
            "data": self.data, "data_config": self.data_config,
            "checkpoint": self.checkpoint, "checkpoint_sha256": self.checkpoint_sha256,
            "checkpoint_metric": self.checkpoint_metric, "checkpoint_mode": self.checkpoint_mode,
            "epochs": self.epochs, "commit": self.commit, "mlnotes_zoo_version": self.version,
            "test_metrics": dict(sorted(self.metrics.items())),
        }


def render(card: ModelCard) -> str:
    """The card's text: YAML front matter, then Markdown."""
    head = yaml.safe_dump(card.front_matter(), sort_keys=False, allow_unicode=True, width=100)
    split = {k: v for k, v in card.data_config.items() if k != "_target_"}
    lines = [
        _FENCE, head.rstrip("\n"), _FENCE, "",
        f"# Model card: {card.model}", "",
        "## Model", "",
        f"`{card.model}` ({_call(card.network)}), trained by `{card.module}`: "
        f"{card.module_doc or 'no description'}", "",
        "## Data and split", "",
        f"`{card.data}`: {card.data_doc or 'no description'}", "",
        *(f"- {k}: `{v}`" for k, v in split.items()), "",
        "## Metric and protocol", "",
    ]
    if card.checkpoint_metric:
        lines.append(f"The checkpoint is the one with the {_best(card.checkpoint_mode)} "
                     f"`{card.checkpoint_metric}` on the validation split over "
                     f"{_epochs(card.epochs)}; the test metrics are that checkpoint's on the "
                     "test split (Lightning's epoch means, weighted by batch size, over every "
                     "test batch).")
    else:
        lines.append(f"The checkpoint holds the last weights after {_epochs(card.epochs)}; the "
                     "test metrics are those weights' on the test split.")
    lines += ["The test-time settings (number of samples, evaluators, …) are the module's "
              "arguments in the resolved config below.", "", "## Test metrics", ""]
    if card.metrics:
        lines += ["| metric | value |", "|---|---:|"]
        lines += [f"| `{k}` | {v:.6g} |" for k, v in sorted(card.metrics.items())]
    else:
        lines.append("Not tested (`test=false`, or the checkpoint was not tested).")
    lines += ["", "## Checkpoint", "",
              f"- file: `{card.checkpoint or 'none'}`",
              f"- sha256: `{card.checkpoint_sha256 or 'none'}`",
              f"- commit: `{card.commit}` (mlnotes-zoo {card.version})", "",
              "## Reproduce", "", "```", " ".join(["python train.py", *card.overrides]), "```",
              "", "## Resolved config", "", "```yaml",
              yaml.safe_dump(card.config, sort_keys=False, allow_unicode=True).rstrip("\n"),
              "```", ""]
    return "\n".join(lines)


def read_model_card(source: str | Path) -> dict[str, Any]:
    """The front matter of a card: ``source`` is a card file (a Path) or a card's text."""
    text = source.read_text() if isinstance(source, Path) else source
    if not text.startswith(_FENCE + "\n"):
        raise ValueError("not a model card: no YAML front matter")
    end = text.index("\n" + _FENCE + "\n", len(_FENCE))
    return yaml.safe_load(text[len(_FENCE) + 1:end])


def write_model_card(run_dir: str | Path, *, config: Mapping[str, Any], model: Any,
                     datamodule: Any, checkpoint: str | Path | None,
                     metrics: Mapping[str, float], epochs: int | None,
                     overrides: Sequence[str] = ()) -> Path:
    """Write ``<run_dir>/MODEL_CARD.md`` for a trained (and tested) run; returns its path.

    ``config``: the resolved job config (a plain dict); ``model``: the LightningModule;
    ``checkpoint``: the file the metrics were measured with (None: the weights in memory).
    """
    from mlnotes_zoo.weights import atomic_path, package_version

    run_dir = Path(run_dir)
    callbacks = config.get("callbacks") or {}
    picker = callbacks.get("model_checkpoint") or {}
    checkpoint_path = Path(checkpoint) if checkpoint else None
    card = ModelCard(
        model=str((model.hparams.get("net") or {}).get("name", type(model.net).__name__)),
        network=dict(model.hparams.get("net") or {}),
        module=_qualname(type(model)), module_doc=_first_line(type(model)),
        data=_qualname(type(datamodule)), data_doc=_first_line(type(datamodule)),
        data_config=dict(config.get("data") or {}),
        checkpoint=_relative(checkpoint_path, run_dir),
        checkpoint_sha256=file_sha256(checkpoint_path) if checkpoint_path else None,
        checkpoint_metric=picker.get("monitor") if checkpoint_path and
        checkpoint_path.name != "last.ckpt" else None,
        checkpoint_mode=picker.get("mode") if picker.get("monitor") else None,
        epochs=epochs, commit=git_commit(), version=package_version(),
        metrics={k: float(v) for k, v in metrics.items()}, overrides=list(overrides),
        config=dict(config))
    if card.checkpoint_metric is None:
        card.checkpoint_mode = None
    path = run_dir / CARD_NAME
    with atomic_path(path) as tmp:
        tmp.write_text(render(card))
    return path


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit(where: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` of the checkout this package runs from (``+dirty`` when files
    differ from it), or ``unknown (not a git checkout)`` for an installed wheel."""
    where = Path(where) if where is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=where, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _first_line(cls: type) -> str:
    """The first sentence of a class's docstring, else of its module's."""
    for doc in (inspect.getdoc(cls), inspect.getdoc(inspect.getmodule(cls))):
        if doc:
            return " ".join(doc.split("\n\n")[0].split())
    return ""


def _relative(path: Path | None, run_dir: Path) -> str | None:
    if path is None:
        return None
    try:
        return str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)


def _call(spec: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in spec.items() if k != "name") or "defaults"


def _best(mode: str | None) -> str:
    return {"min": "lowest", "max": "highest"}.get(mode or "", "best")


def _epochs(epochs: int | None) -> str:
    return "the run" if epochs is None else f"{epochs} epoch{'s' if epochs != 1 else ''}"

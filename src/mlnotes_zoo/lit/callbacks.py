"""Callbacks shared by every family: pictures each validation epoch."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import MLFlowLogger, TensorBoardLogger
from torch import Tensor

from mlnotes_zoo.constraints import NonNegativeInt, PositiveInt


class SavePictures(pl.Callback):
    """Writes ``pl_module.pictures(first val batch)`` as PNGs after each validation epoch.

    Files: ``<dirpath>/<name>_epoch<NNN>.png`` plus ``<name>.png`` for the latest, and the
    same grids in TensorBoard when a TensorBoardLogger is attached. With an MLFlowLogger the
    PNGs are the run's artifacts under ``<dirpath's name>/``: each as it is written, and at
    the end of testing the whole folder (with what the test wrote there, e.g. PonderNet's
    halting picture). Only rank 0 writes.

    Args:
        dirpath: folder of the PNGs.
        every_n_epochs: draw after every n-th validation epoch.
        min_size: small grids are enlarged (nearest) to at least this many pixels across.
    """

    def __init__(self, *, dirpath: str, every_n_epochs: PositiveInt = 1,
                 min_size: NonNegativeInt = 256) -> None:
        super().__init__()
        self.dirpath = Path(dirpath)
        self.every_n_epochs = every_n_epochs
        self.min_size = min_size
        self._batch: Any = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and dataloader_idx == 0:
            self._batch = batch

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (
            trainer.sanity_checking
            or self._batch is None
            or not trainer.is_global_zero
            or trainer.current_epoch % self.every_n_epochs
        ):
            return
        grids = pl_module.pictures(self._batch)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        for name, grid in grids.items():
            grid = grid.float().clamp(0, 1).cpu()
            path = self.dirpath / f"{name}_epoch{trainer.current_epoch:03d}.png"
            _save_png(self._enlarge(grid), path)
            shutil.copyfile(path, self.dirpath / f"{name}.png")  # the latest, same bytes
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image(name, grid, trainer.global_step)
                elif isinstance(logger, MLFlowLogger):
                    logger.experiment.log_artifact(logger.run_id, str(path), self.dirpath.name)
        self._batch = None

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not self.dirpath.is_dir():
            return
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                logger.experiment.log_artifacts(logger.run_id, str(self.dirpath),
                                                self.dirpath.name)

    def _enlarge(self, grid: Tensor) -> Tensor:
        """Repeat pixels (nearest) so the grid is at least ``min_size`` pixels across."""
        factor = max(1, -(-self.min_size // max(grid.shape[-2:])))
        return grid.repeat_interleave(factor, -1).repeat_interleave(factor, -2)


def _save_png(grid: Tensor, path: Path) -> None:
    # (C, H, W) in [0, 1] -> 8-bit PNG; light compression: pictures are small and written often
    array = grid.mul(255).add(0.5).clamp(0, 255).to(dtype=torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)
    image.save(path, compress_level=1)

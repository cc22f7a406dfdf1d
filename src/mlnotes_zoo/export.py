"""Export a trained network and check the export: ``python export.py ckpt_path=<ckpt> format=...``.

Formats (``format=``), each written beside the checkpoint unless ``out=`` says where:

- ``onnx`` (``.onnx``): the network's ``forward`` in eval mode through ``torch.export`` and
  the torch ONNX exporter (``torch.onnx.export(..., dynamo=True)``); checked by running the
  saved file in ONNX Runtime;
- ``torch_export`` (``.pt2``): the ``torch.export`` program (``torch.export.save``); checked
  by loading the saved file and running its module;
- ``safetensors`` (``.safetensors``): the weights and the registry spec
  (:func:`mlnotes_zoo.weights.export`); checked by rebuilding the network from the file.

The check runs in the same command, on the network's ``example_input`` (batch 2 and, when the
program takes any batch size, batch 3): every output tensor of the export equals the eager
network's within ``atol`` (1e-4; relative above magnitude 1: ``|Δ| <= atol·max(1, |ref|)``),
with the same random seed on both sides. A file that fails its check is not left behind
(exit code 1). A network whose inference path cannot be exported in a format is refused in
one line naming the reason and the source line (exit code 2): ``torch.export`` needs one
graph, so Python control flow on tensor values (adaptive ODE solvers, ACT's halting loop,
length trimming, detection's NMS) stops it; a forward that samples (the VAE's ε) can be
exported for torch but not checked against ONNX Runtime, whose random generator is not
torch's. The README's export table lists what works for each model (tests/test_export.py
holds it to that).

Each file carries the run's ``MODEL_CARD.md`` (:mod:`mlnotes_zoo.model_card`): safetensors
metadata ``mlnotes_zoo.model_card``, ONNX ``metadata_props["model_card"]``, the ``.pt2``
archive's extra file ``MODEL_CARD.md``. A checkpoint the run's card is not about (another
epoch's) gets a card of its own, without test metrics.
"""

from __future__ import annotations

import contextlib
import re
import sys
import traceback
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

import torch
from torch import Tensor, nn

from mlnotes_zoo.errors import UsageError, ZooError

__all__ = ["export_checkpoint", "export_network", "ExportReport", "ExportRefusedError",
           "ExportMismatchError", "FORMATS", "SUFFIXES", "CARD_KEY", "cli"]

Format = Literal["onnx", "torch_export", "safetensors"]
FORMATS: tuple[str, ...] = ("onnx", "torch_export", "safetensors")
SUFFIXES = {"onnx": ".onnx", "torch_export": ".pt2", "safetensors": ".safetensors"}
CARD_KEY = "mlnotes_zoo.model_card"  # safetensors metadata key of the card
ONNX_CARD_KEY = "model_card"  # ONNX metadata_props key
PT2_CARD_FILE = "MODEL_CARD.md"  # torch.export archive extra file
USAGE = ("usage: python export.py ckpt_path=<file.ckpt> format=onnx|torch_export|safetensors "
         "[out=<file>] [atol=1e-4]")


class ExportRefusedError(ZooError, ValueError):
    """The network's inference path cannot be exported in this format (the reason and where)."""


class ExportMismatchError(ZooError):
    """The exported file's outputs differ from PyTorch's; the file is not kept."""

    exit_code = 1


@dataclass
class ExportReport:
    path: Path
    format: str
    model: str
    max_abs_diff: float           # over every output tensor and checked batch size
    outputs: int                  # output tensors compared per batch
    batch_sizes: tuple[int, ...]  # the example_input batch sizes checked
    dynamic_batch: bool           # whether the exported program takes any batch size

    def line(self) -> str:
        batches = " and ".join(str(b) for b in self.batch_sizes)
        where = {"onnx": "ONNX Runtime", "torch_export": "the saved program",
                 "safetensors": "the rebuilt network"}[self.format]
        shape = ("; any batch size" if self.dynamic_batch else
                 f"; fixed batch size {self.batch_sizes[0]}" if self.format != "safetensors"
                 else "")
        return (f"exported {self.model} to {self.path} ({self.format}{shape}); checked on "
                f"example_input (batch {batches}): max |{where} - PyTorch| = "
                f"{self.max_abs_diff:.2g} over {self.outputs} output tensor(s)")


# -- the whole command ---------------------------------------------------------------------
def export_checkpoint(ckpt_path: str | Path, format: str = "onnx", out: str | Path | None = None,
                      *, atol: float = 1e-4, batch_size: int = 2) -> ExportReport:
    """Export the network of ``ckpt_path`` (a ``.ckpt`` of ``train.py``) and check it."""
    from mlnotes_zoo.weights import load_checkpoint

    _check_format(format)
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise UsageError(f"ckpt_path={ckpt_path}: no such file")
    out = Path(out) if out else ckpt_path.with_suffix(SUFFIXES[format])
    if out.resolve() == ckpt_path.resolve():
        raise UsageError(f"out={out} is the checkpoint itself; pick another file")
    net = load_checkpoint(ckpt_path)
    card = card_for_checkpoint(ckpt_path)
    if format == "safetensors":
        return _export_safetensors(net, ckpt_path, out, card, atol=atol, batch_size=batch_size)
    return export_network(net, format, out, card=card, atol=atol, batch_size=batch_size)


def export_network(net: nn.Module, format: str, out: str | Path, *, card: str = "",
                   atol: float = 1e-4, batch_size: int = 2) -> ExportReport:
    """Export ``net`` (a registry network) as ``onnx`` or ``torch_export`` to ``out``, check
    the written file against the eager network, and keep it only if it passes."""
    from mlnotes_zoo.weights import atomic_path

    _check_format(format)
    if format == "safetensors":
        raise UsageError("export_network writes onnx or torch_export; safetensors is written "
                         "from a checkpoint (export_checkpoint, mlnotes_zoo.export)")
    net = net.eval()
    name = _model_name(net)
    args = _inference_args(net, batch_size)
    names = _output_names(net, args)
    if format == "onnx":
        _refuse_sampling(net, name, args, names)
    program, dynamic = _torch_export(_FlatOutputs(net), name, format, args)
    out = Path(out)
    with atomic_path(out) as tmp:
        if format == "torch_export":
            _save_pt2(program, tmp, card)
            run = _pt2_runner(tmp)
        else:
            _save_onnx(program, args, tmp, card, name, names)
            run = _onnx_runner(tmp)
        sizes = (batch_size, batch_size + 1) if dynamic else (batch_size,)
        worst, count = 0.0, 0
        for size in sizes:
            diff, count = _compare(net, run, _inference_args(net, size, seed=size), atol,
                                   f"{name} ({format}, batch {size})", names)
            worst = max(worst, diff)
    return ExportReport(out, format, name, worst, count, sizes, dynamic)


def _export_safetensors(net: nn.Module, ckpt_path: Path, out: Path, card: str, *,
                        atol: float, batch_size: int) -> ExportReport:
    from mlnotes_zoo.weights import export, load_weights

    name = _model_name(net)
    export(ckpt_path, out, metadata={CARD_KEY: card})
    try:
        rebuilt = load_weights(None, out, {}).eval()
        theirs, ours = rebuilt.state_dict(), net.state_dict()
        if theirs.keys() != ours.keys() or any(not torch.equal(theirs[k], ours[k]) for k in ours):
            raise ExportMismatchError(f"{name}: the tensors read back from {out} differ from "
                                      "the checkpoint's")
        diff, count = _compare(net, _eager_runner(rebuilt), _inference_args(net, batch_size),
                               atol, f"{name} (safetensors)")
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return ExportReport(out, "safetensors", name, diff, count, (batch_size,), False)


# -- inputs, outputs, comparison --------------------------------------------------------------
def _inference_args(net: nn.Module, batch_size: int, seed: int = 0) -> tuple[Any, ...]:
    """``example_input(batch_size)`` as forward arguments for inference: a list of dicts
    (detection's training targets) is not an input of the eval-mode forward."""
    with _seeded(seed):
        x = net.example_input(batch_size)
    args = x if isinstance(x, tuple) else (x,)
    return tuple(a for a in args if not (isinstance(a, (list, tuple)) and a
                                         and all(isinstance(t, Mapping) for t in a)))


def _leaves(out: Any) -> list[Tensor]:
    """The output tensors in the order the exporters flatten them (torch's pytree)."""
    from torch.utils._pytree import tree_leaves

    return [t for t in tree_leaves(out) if isinstance(t, Tensor)]


class _FlatOutputs(nn.Module):
    """The network with its outputs as a flat tuple of tensors (a NamedTuple's fields in
    order, nested lists flattened): what ONNX gives anyway, and what a ``.pt2`` archive can
    store without registering each family's output class."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, *args: Any) -> tuple[Tensor, ...]:
        return tuple(_leaves(self.net(*args)))


def _output_names(net: nn.Module, args: tuple[Any, ...]) -> list[str]:
    """Names of the flat outputs: a NamedTuple's field names (``hidden_0``, ``hidden_1``
    for a list field), ``output_<i>`` otherwise."""
    with _seeded(0), torch.no_grad():
        out = net(*args)

    def walk(value: Any, prefix: str) -> list[str]:
        if isinstance(value, Tensor):
            return [prefix]
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            return [n for f in value._fields for n in walk(getattr(value, f), _join(prefix, f))]
        if isinstance(value, Mapping):
            return [n for k, v in value.items() for n in walk(v, _join(prefix, str(k)))]
        if isinstance(value, (list, tuple)):
            return [n for i, v in enumerate(value) for n in walk(v, _join(prefix, str(i)))]
        return []

    names = walk(out, "")
    return [n or "output" for n in names] if len(names) == 1 else [
        n if n and not n[0].isdigit() else f"output_{n}" for n in names]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}_{name}" if prefix else name


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _eager_runner(net: nn.Module) -> Any:
    def run(args: Sequence[Any]) -> list[Tensor]:
        with torch.no_grad():
            return _leaves(net(*args))
    return run


def _compare(net: nn.Module, run: Any, args: tuple[Any, ...], atol: float,
             what: str, names: Sequence[str] | None = None) -> tuple[float, int]:
    """Max |export − eager| over the output tensors (same seed on both sides)."""
    with _seeded(1234):
        expected = _eager_runner(net)(args)
    with _seeded(1234):
        got = run(args)
    if len(got) != len(expected):
        raise ExportMismatchError(f"{what}: {len(got)} output tensors, PyTorch gives "
                                  f"{len(expected)}")
    worst = 0.0
    labels = list(names) if names and len(names) == len(expected) else range(len(expected))
    for i, ref, value in zip(labels, expected, got, strict=True):
        value = torch.as_tensor(value)
        if tuple(value.shape) != tuple(ref.shape):
            raise ExportMismatchError(f"{what}: output {i} has shape {tuple(value.shape)}, "
                                      f"PyTorch's {tuple(ref.shape)}")
        if not ref.numel():
            continue
        ref64, value64 = ref.detach().double(), value.double()
        if ref.is_floating_point():
            if not torch.equal(ref64.isfinite(), value64.isfinite()):
                raise ExportMismatchError(f"{what}: output {i} is non-finite in other places")
            finite = ref64.isfinite()
            diff = (ref64 - value64).abs()[finite]
            excess = diff / ref64.abs()[finite].clamp(min=1.0)
            worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
            if excess.numel() and float(excess.max()) > atol:
                raise ExportMismatchError(
                    f"{what}: output {i} differs from PyTorch's by up to {float(diff.max()):.3g}"
                    f" (> {atol:g}·max(1, |value|)); the exported file is not kept")
        elif not torch.equal(ref64, value64):
            raise ExportMismatchError(f"{what}: integer output {i} differs from PyTorch's; "
                                      "the exported file is not kept")
    return worst, len(expected)


# -- torch.export and ONNX ------------------------------------------------------------------
def _torch_export(net: nn.Module, name: str, format: str,
                  args: tuple[Any, ...]) -> tuple[torch.export.ExportedProgram, bool]:
    """The eval-mode forward as one graph; with any batch size when the forward allows it."""
    batch = torch.export.Dim("batch", min=1)
    dynamic = (tuple(_batch_dims(a, batch) for a in args),)  # forward(*args): one varargs
    try:
        with _quiet():
            return torch.export.export(net, args, dynamic_shapes=dynamic, strict=False), True
    except Exception:  # noqa: BLE001 - e.g. a batch size the code fixes: try it static
        pass
    try:
        with _quiet():
            return torch.export.export(net, args, strict=False), False
    except Exception as err:  # noqa: BLE001 - torch raises many kinds; each is a refusal
        raise ExportRefusedError(_refusal(name, format, err)) from None


def _batch_dims(arg: Any, batch: Any) -> Any:
    if isinstance(arg, Tensor):
        return {0: batch} if arg.dim() else None
    if isinstance(arg, (list, tuple)):
        return type(arg)(_batch_dims(a, None) for a in arg)  # a list of images: fixed sizes
    return None


def _refusal(name: str, format: str, err: Exception) -> str:
    """One line: what torch.export could not capture, and the source line that does it."""
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if "/torch/" not in f.filename and "<" not in f.filename
              and not f.filename.endswith("/mlnotes_zoo/export.py")]
    where = ""
    if frames:
        f = frames[-1]
        short = (f.filename.split("site-packages/")[-1] if "site-packages/" in f.filename
                 else f.filename.split("/src/")[-1])
        where = f" at {short}:{f.lineno} `{(f.line or '').strip()}`"
    kind = type(err).__name__
    if "DataDependent" in kind:
        why = "Python control flow or a size that depends on tensor values"
    else:
        why = f"{kind}: {_first_line(err)}"
    return (f"{name}: no {format} export: torch.export cannot capture its eval-mode forward in "
            f"one graph ({why}{where}); safetensors works for every model")


def _refuse_sampling(net: nn.Module, name: str, args: tuple[Any, ...],
                     names: Sequence[str]) -> None:
    """A forward whose outputs change with the random seed cannot be checked against ONNX
    Runtime, which draws its own random numbers."""
    with _seeded(0):
        first = _eager_runner(net)(args)
    with _seeded(1):
        second = _eager_runner(net)(args)
    changed = [names[i] if len(names) == len(first) else str(i)
               for i, (a, b) in enumerate(zip(first, second, strict=True)) if not torch.equal(a, b)]
    if changed:
        raise ExportRefusedError(
            f"{name}: no onnx export: its eval-mode forward samples ({', '.join(changed)} "
            f"change with the random seed), and ONNX Runtime's "
            "random numbers are not torch's, so the export cannot be checked; torch_export "
            "and safetensors work")


def _save_onnx(program: torch.export.ExportedProgram, args: tuple[Any, ...], path: Path,
               card: str, name: str, output_names: list[str]) -> None:
    import onnx

    try:
        with _quiet():
            onnx_program = torch.onnx.export(program, args, dynamo=True, verbose=False,
                                             report=False, output_names=output_names)
    except Exception as err:  # noqa: BLE001 - the exporter's own errors: a refusal
        raise ExportRefusedError(f"{name}: no onnx export: the ONNX exporter stops "
                                 f"({type(err).__name__}: {_first_line(err)}); torch_export "
                                 "and safetensors may work") from None
    model = onnx_program.model_proto
    onnx.helper.set_model_props(model, {ONNX_CARD_KEY: card})
    onnx.save(model, str(path))


def _onnx_runner(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(args: Sequence[Any]) -> list[Tensor]:
        flat = _leaves(list(args))
        feed = {n: t.detach().cpu().numpy() for n, t in zip(names, flat, strict=True)}
        return [torch.from_numpy(o) for o in session.run(None, feed)]
    return run


def _save_pt2(program: torch.export.ExportedProgram, path: Path, card: str) -> None:
    import io

    buffer = io.BytesIO()  # torch.export.save wants a ".pt2" name; the temporary has none
    torch.export.save(program, buffer, extra_files={PT2_CARD_FILE: card})
    path.write_bytes(buffer.getvalue())


def _pt2_runner(path: Path) -> Any:
    import io

    module = torch.export.load(io.BytesIO(path.read_bytes())).module()

    def run(args: Sequence[Any]) -> list[Tensor]:
        with torch.no_grad():
            return _leaves(module(*args))
    return run


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' progress prints and warnings are not the user's business."""
    import io
    import logging

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export",
                                               "torch.fx.experimental.symbolic_shapes")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        # torch's loggers write to sys.stderr as it is when they emit (a failed export's
        # graph dump): that goes too, the refusal says what matters in one line
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# -- the model card -------------------------------------------------------------------------
def card_for_checkpoint(ckpt_path: str | Path) -> str:
    """The run's MODEL_CARD.md when it is about this checkpoint (same sha256), else a card of
    this checkpoint alone: its network, the run's resolved config, no test metrics."""
    import yaml

    from mlnotes_zoo.model_card import (
        CARD_NAME,
        ModelCard,
        file_sha256,
        git_commit,
        read_model_card,
        render,
    )
    from mlnotes_zoo.weights import package_version, read_weights

    ckpt_path = Path(ckpt_path)
    run_dir = ckpt_path.resolve().parent.parent
    sha = file_sha256(ckpt_path)
    card_file = run_dir / CARD_NAME
    if card_file.is_file():
        text = card_file.read_text()
        with contextlib.suppress(ValueError, yaml.YAMLError):
            if read_model_card(text).get("checkpoint_sha256") == sha:
                return text
    spec, _ = read_weights(ckpt_path)
    config: dict[str, Any] = {}
    if (run_dir / "config.yaml").is_file():
        with contextlib.suppress(yaml.YAMLError):
            config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    data = config.get("data") or {}
    module = (config.get("model") or {}).get("_target_", "unknown")
    card = ModelCard(
        model=str((spec or {}).get("name", "unknown")), network=dict(spec or {}),
        module=str(module), module_doc="(card written at export: the run has no card about "
        "this checkpoint, so no test metrics)",
        data=str(data.get("_target_", "unknown")), data_doc="", data_config=dict(data),
        checkpoint=str(ckpt_path.name), checkpoint_sha256=sha, checkpoint_metric=None,
        checkpoint_mode=None, epochs=None, commit=git_commit(), version=package_version(),
        config=config)
    return render(card)


# -- command line ---------------------------------------------------------------------------
def cli(argv: list[str] | None = None) -> None:
    """``mlnotes-zoo-export ckpt_path=<ckpt> format=onnx|torch_export|safetensors [out=...]``:
    overrides of configs/export.yaml, as ``python export.py``."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from mlnotes_zoo.config import config_dir, usage_error
    from mlnotes_zoo.resume import hydra_value

    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return
    # a path as the user typed it (Lightning's checkpoint names hold "=")
    args = [re.sub(r"^(ckpt_path|out)=(.+)$", lambda m: f"{m[1]}={_as_given(m[2], hydra_value)}",
                   a, flags=re.DOTALL) for a in args]
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("export", overrides=args)
        options = OmegaConf.to_container(cfg, resolve=True)
        if options.get("ckpt_path") in (None, "", "???"):
            raise UsageError(f"ckpt_path= is required\n{USAGE}")
        report = export_checkpoint(options["ckpt_path"], str(options["format"]),
                                   options.get("out"), atol=float(options["atol"]),
                                   batch_size=int(options["batch_size"]))
    except ZooError as err:
        _exit(err)
    except HydraException as err:
        _exit(usage_error(err))
    except Exception as err:
        from omegaconf.errors import OmegaConfBaseException

        if isinstance(err, OmegaConfBaseException):
            _exit(usage_error(err))
        raise
    print(report.line())


def _as_given(value: str, quote: Any) -> str:
    if value[:1] in ("'", '"') or value == "null" or "${" in value:
        return value
    return quote(value)


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise UsageError(f"format={format}: must be one of {', '.join(FORMATS)}")


def _model_name(net: nn.Module) -> str:
    return str(getattr(net, "zoo_spec", {}).get("name", type(net).__name__))


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else "no detail"


def _exit(err: ZooError) -> NoReturn:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(err.exit_code)

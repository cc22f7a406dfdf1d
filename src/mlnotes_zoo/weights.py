"""Loading and export of weights: ``weights_only`` checkpoints, safetensors, clear mismatches.

Nothing here unpickles more than tensors and plain Python values, so a file from an
untrusted source cannot run code when it is opened (a pickle can name any callable, e.g.
``os.system``, and ``torch.load(weights_only=False)`` would call it). A file that does not
fit the network — another model, other kwargs — is reported by name, key and shape instead
of as a wall of missing keys. Lightning is not needed.

Formats read by :func:`read_weights`, told apart by their first bytes, never by the file's
suffix (:func:`weights_format`):

- a ``.ckpt`` written by ``train.py`` (``torch.save``'s zip): the network's registry spec is
  in ``hyper_parameters["net"]``, its tensors are the ``net.*`` entries of ``state_dict``;
- a ``.safetensors`` written by :func:`export`: the spec is the ``mlnotes_zoo.net`` metadata
  entry (JSON);
- a plain ``state_dict`` saved with ``torch.save`` (no spec: the kwargs must be given).

Nothing in a file can exhaust memory either. A file's spec is data, checked before anything
is built (:func:`check_spec`: a registered name, each kwarg by the builder's annotations, as
the command line checks a config); the network it describes is then built on the ``meta``
device, where no tensor has storage, and its keys, shapes and dtypes are compared with the
file's tensors (:func:`network_on_meta`). Only a network that fits is built for real. The
file's own tensors are bounded by its size: safetensors and ``torch.save``'s zip check every
tensor against the bytes that hold it; compressed zip entries (``torch.save`` never writes
them, a zip bomb does) and the legacy pickle layout (which allocates the storage sizes its
pickle declares before reading them) are refused.

:func:`load_checkpoint` rebuilds a network from either of the first two; :func:`export`
writes the second from the first. (A training run's full state — optimizer, RNG, loops — is
:mod:`mlnotes_zoo.resume`'s business.)
"""

from __future__ import annotations

import glob
import json
import os
import re
import secrets
import socket
import threading
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from mlnotes_zoo.constraints import check_arguments, parameters, show
from mlnotes_zoo.errors import UsageError, ZooError
from mlnotes_zoo.registry import create_model, get_builder, list_models

__all__ = ["load_checkpoint", "export", "read_weights", "load_weights", "safe_torch_load",
           "check_state_dict", "check_spec", "network_on_meta", "weights_format", "atomic_path",
           "UnsafeCheckpointError", "IncompatibleWeightsError", "UnreadableWeightsError"]

SPEC_KEY = "mlnotes_zoo.net"  # safetensors metadata: JSON {"name": ..., **kwargs}
_SHOWN = 3  # keys listed per kind of mismatch; the rest are counted

# What a spec may ask beyond the tensors its file holds (those it must match exactly):
# buffers a network computes instead of keeping (positional tables, causal masks), in values.
MAX_UNSAVED_VALUES = 2**27  # 512 MiB of float32
# Modules a spec may build per tensor of its file (+ a fixed allowance): a spec asking for a
# million layers is refused while the network is built on ``meta``, not after minutes.
_MODULES_PER_TENSOR, _MODULES_EXTRA = 4, 1_000  # the zoo's networks: <= 1.4 per tensor

SAFETENSORS, TORCH_ZIP, PICKLE = "safetensors", "torch zip", "pickle"
_MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library's own limit


class UnsafeCheckpointError(ZooError, ValueError):
    """The file asks for more than data: a pickle that could run code, or a network (or
    storage) far larger than its own tensors, which could exhaust memory."""


class UnreadableWeightsError(ZooError, ValueError):
    """The file is not a checkpoint, state dict or safetensors file (or it is truncated), or
    its network spec is malformed."""


class IncompatibleWeightsError(ZooError, ValueError):
    """The weights belong to another network, or to the same one built with other kwargs."""


# -- what a file is -----------------------------------------------------------------------
def weights_format(path: str | PathLike) -> str:
    """``"safetensors"``, ``"torch zip"`` or ``"pickle"``, read from the first bytes of
    ``path``, never from its suffix: safetensors starts with the 8-byte little-endian length
    of its JSON header and then ``{``; ``torch.save`` (PyTorch >= 1.6) writes a zip
    (``PK\\x03\\x04``); the legacy layout and raw pickles start with pickle's ``\\x80``."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
    header = int.from_bytes(head[:8], "little") if len(head) == 9 else 0
    # a zip or pickle whose 9th byte happens to be "{" reads as an absurd header length
    if head[8:9] == b"{" and (header <= _MAX_SAFETENSORS_HEADER
                              or not head.startswith((b"PK\x03\x04", b"\x80"))):
        if header > size - 8:
            raise UnreadableWeightsError(
                f"{path}: a safetensors header of {header} bytes in a file of {size} bytes; "
                "is it truncated?")
        return SAFETENSORS
    if head.startswith(b"PK\x03\x04"):
        return TORCH_ZIP
    if head.startswith(b"\x80"):
        return PICKLE
    what = "an empty file" if size == 0 else f"starts with {head[:8]!r}"
    raise UnreadableWeightsError(
        f"{path}: not a weights file ({what}): neither safetensors (an 8-byte header length, "
        "then JSON), a torch.save zip ('PK') nor a pickle")


def safe_torch_load(path: str | PathLike, *, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that say what went wrong
    (``mmap=True``: tensors are mapped from the file, not read).

    A safetensors file is refused with what to use instead (it holds a network, not a
    training checkpoint), and so are the formats that could exhaust memory (see the module).
    """
    fmt = weights_format(path)
    if fmt == SAFETENSORS:
        raise UnreadableWeightsError(
            f"{path} is a safetensors weights file (a network, e.g. from mlnotes_zoo.export), "
            "not a training checkpoint: load the network with mlnotes_zoo.create_model(<name>, "
            "weights=...) or mlnotes_zoo.load_checkpoint(...); ckpt_path= and load_from_checkpoint "
            "take a .ckpt written by train.py (<run dir>/checkpoints/last.ckpt)")
    return _torch_load(Path(path), fmt, map_location=map_location, mmap=mmap)


def _torch_load(path: Path, fmt: str, *, map_location: Any = "cpu", mmap: bool = False) -> Any:
    if fmt == PICKLE:
        raise UnsafeCheckpointError(
            f"{path}: refused to load: a bare pickle (torch.save's legacy layout, before "
            "PyTorch 1.6, or pickle.dump) allocates the storage sizes it declares before "
            "reading them and may name any callable; only torch.save's zip layout and "
            "safetensors are read. Only if you trust its source: torch.load(path, "
            "weights_only=False), then torch.save its state_dict.")
    _check_zip(path)
    try:
        if mmap and path.suffix != ".safetensors":
            return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
        with path.open("rb") as f:  # a file object: torch.load goes by a path's suffix
            return torch.load(f, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - torch raises KeyError/RuntimeError/... for junk
        message = str(err)
        if "Weights only load failed" in message:
            glob = re.search(r"GLOBAL ([\w.]+)", message)
            what = (f"calls {glob.group(1)}" if glob else
                    "uses pickle instructions beyond tensors and plain values")
            raise UnsafeCheckpointError(
                f"{path}: refused to load: its pickle {what}, and loading it could run "
                "arbitrary code (checkpoints are read with torch.load(weights_only=True)). "
                "Only if you trust its source: torch.load(path, weights_only=False), then save "
                "its state_dict."
            ) from None
        first = message.split(". ")[0].splitlines()[0] if message else "no detail"
        raise UnreadableWeightsError(
            f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {first}); "
            "is it truncated?"
        ) from None


def _check_zip(path: Path) -> None:
    """Refuse compressed entries: ``torch.load`` inflates them, so a few kilobytes can ask
    for gigabytes (``torch.save`` stores every entry uncompressed)."""
    try:
        with zipfile.ZipFile(path) as archive:
            packed = [i.filename for i in archive.infolist()
                      if i.compress_type != zipfile.ZIP_STORED]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise UnreadableWeightsError(
            f"{path}: not a readable PyTorch checkpoint (a damaged zip: {err}); is it "
            "truncated?") from None
    if packed:
        raise UnsafeCheckpointError(
            f"{path}: refused to load: its zip entry {_short(packed[0])} is compressed "
            "(torch.save never compresses, and a compressed entry can expand far beyond the "
            "file's size)")


# -- reading ------------------------------------------------------------------------------
def read_weights(path: str | PathLike) -> tuple[dict[str, Any] | None, dict[str, Tensor]]:
    """``(spec or None, network state_dict)`` of a checkpoint, safetensors or state-dict file.

    The containers are checked (a mapping of tensors, a spec that is a mapping); the spec's
    values are not (:func:`check_spec`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    fmt = weights_format(path)
    if fmt == SAFETENSORS:
        return _read_safetensors(path)
    obj = _torch_load(path, fmt)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        hparams = obj.get("hyper_parameters")
        if hparams is not None and not isinstance(hparams, Mapping):
            raise UnreadableWeightsError(
                f"{path}: its 'hyper_parameters' is {_a(hparams)}, not a mapping")
        state = _tensors(obj["state_dict"], f"{path}: its 'state_dict'")
        spec = (hparams or {}).get("net")
        prefix = "net."
        return spec, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return None, _tensors(obj, str(path))
    raise UnreadableWeightsError(
        f"{path}: neither a training checkpoint (with 'state_dict') nor a state dict of tensors")


def _tensors(state: Any, where: str) -> dict[str, Tensor]:
    if not isinstance(state, Mapping):
        raise UnreadableWeightsError(f"{where} is {_a(state)}, not a mapping of tensors")
    for key, value in state.items():
        if not isinstance(key, str):
            raise UnreadableWeightsError(f"{where} has a key {_short(repr(key))} that is not a "
                                         "string")
        if not isinstance(value, Tensor):
            raise UnreadableWeightsError(f"{where}[{_short(repr(key))}] is {_a(value)}, not a "
                                         "tensor")
    return dict(state)


def _read_safetensors(path: Path) -> tuple[dict[str, Any] | None, dict[str, Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UnreadableWeightsError(
            f"{path}: not a readable safetensors file ({_short(first, 200)})") from None
    if SPEC_KEY not in metadata:
        return None, state
    try:
        spec = json.loads(metadata[SPEC_KEY], parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:
        raise UnreadableWeightsError(
            f"{path}: its network spec (metadata {SPEC_KEY!r}) is not valid JSON "
            f"({_short(str(err), 120)})") from None
    return spec, state


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")  # json.loads takes NaN/Infinity, JSON does not


# -- checking the spec --------------------------------------------------------------------
def check_spec(spec: Any, source: str) -> dict[str, Any]:
    """The network spec ``{"name": ..., **kwargs}`` of the file ``source``, checked as the
    command line checks a config's ``net`` node before anything is built: a mapping with a
    registered ``name`` and only the keys its builder takes, each value by the builder's
    annotation (type and range, :func:`mlnotes_zoo.constraints.check_arguments`).

    Raises :class:`UnreadableWeightsError` naming the file and what is wrong
    (:class:`IncompatibleWeightsError` for a network this zoo does not have).
    """
    where = f"{source}: its network spec"
    if not isinstance(spec, Mapping):
        raise UnreadableWeightsError(f"{where} is {_a(spec)}, not a mapping "
                                     "{'name': <model>, **kwargs}")
    keys = [k for k in spec if not isinstance(k, str)]
    if keys:
        raise UnreadableWeightsError(f"{where} has a key {_short(repr(keys[0]))} that is not "
                                     "a string")
    if "name" not in spec:
        raise UnreadableWeightsError(f"{where} has no 'name' (the registered model)")
    name = spec["name"]
    if not isinstance(name, str):
        raise UnreadableWeightsError(f"{where}: name={_show(name)}: must be a string, one of "
                                     f"{', '.join(list_models())}")
    if name not in list_models():
        raise IncompatibleWeightsError(
            f"{where}: name={_show(name)}: not a model of this mlnotes_zoo; registered models: "
            f"{', '.join(list_models())}")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    params, open_kwargs = parameters(get_builder(name))
    unknown = [k for k in kwargs if k not in params]
    if unknown and not open_kwargs:
        raise UnreadableWeightsError(
            f"{where}: unknown key {_short(repr(unknown[0]))} for {name!r}; valid keys: "
            f"{', '.join(params)}")
    try:
        check_arguments(get_builder(name), kwargs, where=f"{where} ({name}): ")
    except UsageError as err:
        raise UnreadableWeightsError(str(err)) from None
    return {"name": name, **kwargs}


# -- building on meta ---------------------------------------------------------------------
class _TooLarge(Exception):
    pass


class _BuildLimits:
    """Global module/tensor registration hooks that stop a build (on this thread) as soon as
    it registers more than ``max_modules`` modules or ``max_values`` tensor elements."""

    def __init__(self, max_modules: int, max_values: int) -> None:
        self.max_modules, self.max_values = max_modules, max_values
        self.modules = self.values = 0
        self.thread = threading.get_ident()

    def _module(self, module: nn.Module, name: str, sub: Any) -> None:
        if threading.get_ident() == self.thread and sub is not None:
            self.modules += 1
            if self.modules > self.max_modules:
                raise _TooLarge(f"more than {self.max_modules:,} modules")

    def _tensor(self, module: nn.Module, name: str, tensor: Any) -> None:
        if threading.get_ident() == self.thread and isinstance(tensor, Tensor):
            self.values += tensor.numel()
            if self.values > self.max_values:
                raise _TooLarge(f"at least {self.values:,} values in its tensors")

    def __enter__(self) -> _BuildLimits:
        from torch.nn.modules import module as torch_module

        self._handles = [
            torch_module.register_module_module_registration_hook(self._module),
            torch_module.register_module_parameter_registration_hook(self._tensor),
            torch_module.register_module_buffer_registration_hook(self._tensor),
        ]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()


class _MetaScalars(TorchFunctionMode):
    """Reading a value out of a ``meta`` tensor gives 0 (False) instead of an error.

    Only shapes matter on meta; a constructor that checks a value (torchaudio's mel filter
    bank warns when a filter is all zero) would otherwise not build there at all. What is
    built for real afterwards is compared with the file again.
    """

    _SCALARS = {torch.Tensor.__bool__: False, torch.Tensor.item: 0, torch.Tensor.__int__: 0,
                torch.Tensor.__float__: 0.0, torch.Tensor.__index__: 0}

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in self._SCALARS and args and isinstance(args[0], Tensor) and args[0].is_meta:
            return self._SCALARS[func]
        return func(*args, **(kwargs or {}))


def network_on_meta(name: str, kwargs: Mapping[str, Any], state: Mapping[str, Tensor], *,
                    source: str, note: str = "", compare: bool = True) -> nn.Module:
    """Build ``create_model(name, **kwargs)`` on the ``meta`` device (no storage is
    allocated) and check it against the file's tensors ``state``: the same keys, shapes and
    kinds of dtype (:func:`check_state_dict`), and no more than :data:`MAX_UNSAVED_VALUES`
    in buffers the file does not keep. A build asking for far more modules or values than
    the file holds is stopped while it runs (``compare=False``: only those limits, for a
    non-strict load). Returns the meta network.
    """
    file_values = sum(t.numel() for t in state.values())
    limits = _BuildLimits(_MODULES_PER_TENSOR * len(state) + _MODULES_EXTRA,
                          2 * file_values + MAX_UNSAVED_VALUES)
    target = describe({"name": name, **kwargs})
    try:
        with limits, torch.device("meta"), _MetaScalars():
            model = create_model(name, **kwargs)
    except _TooLarge as err:
        raise UnsafeCheckpointError(
            f"{source}: refused to build {target}: it asks for {err}, and the file holds "
            f"{len(state):,} tensor(s) of {file_values:,} values in all") from None
    except UsageError:
        raise  # a kwarg given by the caller (create_model's own check)
    except Exception as err:  # noqa: BLE001 - whatever the builder raises: it cannot be built
        first = str(err).splitlines()[0] if str(err) else ""
        raise UnreadableWeightsError(
            f"{source}: its network spec {target} cannot be built "
            f"({type(err).__name__}: {_short(first, 200)})") from None
    expected = model.state_dict()
    spec_values = sum(t.numel() for t in expected.values())
    if spec_values != file_values:
        size = f"The spec asks for {spec_values:,} values, the file holds {file_values:,}"
        note = f"{size}. {note}" if note else size
    if compare:
        check_state_dict(expected, state, source=source, target=target, note=note)
    unsaved = sum(b.numel() for key, b in model.named_buffers() if key not in expected)
    if unsaved > MAX_UNSAVED_VALUES:
        raise UnsafeCheckpointError(
            f"{source}: refused to build {target}: it computes {unsaved:,} buffer values that "
            f"the file does not keep (at most {MAX_UNSAVED_VALUES:,})")
    return model


# -- checking and loading -----------------------------------------------------------------
def check_state_dict(expected: Mapping[str, Tensor], found: Mapping[str, Tensor], *,
                     source: str, target: str, note: str = "") -> None:
    """Raise :class:`IncompatibleWeightsError` naming the keys and shapes that differ, and
    tensors whose dtype is of another kind (a floating tensor may be of any precision: it is
    cast when loaded; an integer one must be an integer, a bool a bool)."""
    missing = [k for k in expected if k not in found]
    unexpected = [_short(k) for k in found if k not in expected]
    shapes = [f"{k} {tuple(found[k].shape)} in the file vs {tuple(v.shape)} in the model"
              for k, v in expected.items()
              if k in found and tuple(found[k].shape) != tuple(v.shape)]
    dtypes = [f"{k} {found[k].dtype} in the file vs {v.dtype} in the model"
              for k, v in expected.items()
              if k in found and _dtype_kind(found[k].dtype) != _dtype_kind(v.dtype)]
    if not (missing or unexpected or shapes or dtypes):
        return
    problems = []
    for label, items in (("differ in shape", shapes), ("differ in dtype", dtypes),
                         ("are missing from the file", missing),
                         ("in the file are not in the model", unexpected)):
        if items:
            more = f", … ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
            problems.append(f"{len(items)} tensor(s) {label}: {', '.join(items[:_SHOWN])}{more}")
    raise IncompatibleWeightsError(
        f"{source} does not fit {target}: " + "; ".join(problems) + (f". {note}" if note else ""))


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    return "complex" if dtype.is_complex else "float" if dtype.is_floating_point else "int"


def describe(spec: Mapping[str, Any]) -> str:
    """``vae(latent_dim=16, hidden=1024, ...)`` for messages."""
    kwargs = ", ".join(f"{_short(str(k), 40)}={_show(v)}" for k, v in spec.items()
                       if k != "name")
    return _short(f"{_show(spec.get('name', '?')).strip(chr(39))}({kwargs})", 300)


def spec_note(saved: Mapping[str, Any] | None, asked: Mapping[str, Any]) -> str:
    """Which kwargs the file was saved with that differ from the ones asked for."""
    if not saved:
        return ""
    diffs = [f"{k}={saved[k]!r} (asked {asked[k]!r})" for k in saved
             if k != "name" and k in asked and _plain(asked[k]) != _plain(saved[k])]
    return f"The weights were saved with {', '.join(diffs)}." if diffs else ""


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit - 1]}…"


def _show(value: Any) -> str:
    return _short(show(value) if isinstance(value, (str, int, float, bool, list, tuple))
                  or value is None else f"<{type(value).__name__}>", 60)


def _a(value: Any) -> str:
    name = "null" if value is None else type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def load_weights(name: str | None, path: str | PathLike, kwargs: Mapping[str, Any]) -> nn.Module:
    """``create_model(name, **kwargs)`` with the tensors of ``path``; see :func:`read_weights`.

    The file's own kwargs are the defaults (``create_model("vae", weights=f)`` rebuilds the
    saved network); kwargs given here override them, and must still fit the tensors.
    ``name=None`` takes the name from the file.

    The order keeps a hostile file harmless: the spec is checked (:func:`check_spec`), the
    network is built on ``meta`` and compared with the tensors (:func:`network_on_meta`),
    and only then built for real and loaded.
    """
    source = str(path)
    saved, state = read_weights(path)
    spec = check_spec(saved, source) if saved is not None else None
    if name is None:
        if spec is None:
            raise UnreadableWeightsError(
                f"{path}: no network spec (a checkpoint's hyper_parameters['net']); it was not "
                "written by a mlnotes_zoo LightningModule with a registered network")
        name = spec["name"]
    if spec is not None and spec["name"] != name:
        raise IncompatibleWeightsError(
            f"{path} holds a {spec['name']!r} network ({describe(spec)}), not {name!r}; "
            f"use create_model({spec['name']!r}, weights=...)")
    builder = get_builder(name)  # an unknown name: the registry's KeyError, as create_model
    params, open_kwargs = parameters(builder)
    for key in kwargs:
        if key not in params and not open_kwargs:
            raise TypeError(f"{name}: unexpected keyword argument {key!r}")
    check_arguments(builder, kwargs, where=f"{name}: ")  # the caller's kwargs: UsageError
    merged = {**{k: v for k, v in (spec or {}).items() if k != "name"}, **kwargs}
    note = spec_note(spec, kwargs)
    network_on_meta(name, merged, state, source=source, note=note)
    model = create_model(name, **merged)
    check_state_dict(model.state_dict(), state, source=source,
                     target=describe(model.zoo_spec), note=note)
    model.load_state_dict(state)
    return model


def load_checkpoint(path: str | PathLike, *, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load ``path`` (a ``.ckpt`` written by ``train.py``, or a ``.safetensors`` written by
    :func:`export`) and return its network in eval mode; Lightning is not needed.

    The network is rebuilt from the registry name and kwargs kept in the file (a checkpoint's
    ``hyper_parameters["net"]``): nothing is unpickled but tensors and plain Python values
    (``torch.load(weights_only=True)``); a pickle that asks for more is refused
    (:class:`UnsafeCheckpointError`), and the spec is checked before anything is built
    (:func:`load_weights`).
    """
    return load_weights(None, path, {}).to(map_location).eval()


# -- writing ------------------------------------------------------------------------------
@contextmanager
def atomic_path(path: str | PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``.

    A crash at any moment (SIGKILL, power loss) leaves either the old file or the new one,
    never a truncated mix: ``os.replace`` within one directory is atomic (POSIX rename), and
    the fsyncs order the data before the rename on disk.

    The temporary file is ``.<name>.<host>.<pid>.<random>.tmp``: unique to this write, so
    that processes writing one path at once never touch each other's. Besides its own, a
    process deletes only those left by dead processes of its host (killed mid-write).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if _left_by_dead_process(stale.name, path.name):
            stale.unlink(missing_ok=True)


_HOST = re.sub(r"[^\w.-]", "_", socket.gethostname())


def _left_by_dead_process(tmp_name: str, name: str) -> bool:
    """Whether ``tmp_name`` (an :func:`atomic_path` temporary of ``name``) was left by a
    process of this host that no longer runs."""
    match = re.fullmatch(rf"\.{re.escape(name)}\.(.+)\.(\d+)\.[0-9a-f]+\.tmp", tmp_name)
    if match is None or match.group(1) != _HOST:
        return False
    try:
        os.kill(int(match.group(2)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def export(checkpoint: str | PathLike, out: str | PathLike, *,
           metadata: Mapping[str, str] | None = None) -> Path:
    """Write the network of ``checkpoint`` (a ``.ckpt`` from ``train.py``) to ``out``, a
    ``.safetensors`` file with the registry spec as metadata; returns ``out``.

    ``create_model(name, weights=out)`` rebuilds it; the file holds no pickle at all.
    ``metadata``: more string entries (``export.py`` adds the model card).
    """
    from safetensors.torch import save_file

    model = load_weights(None, checkpoint, {})  # checks the tensors against the spec
    # copies: safetensors refuses tensors that share storage (tied weights are stored twice)
    tensors = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    out = Path(out)
    metadata = {**(metadata or {}), SPEC_KEY: json.dumps(model.zoo_spec), "format": "pt",
                "mlnotes_zoo.version": package_version()}
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return out


def package_version() -> str:
    """The installed mlnotes-zoo version (``0+unknown`` when run from an uninstalled tree)."""
    try:
        return metadata.version("mlnotes-zoo")
    except metadata.PackageNotFoundError:
        return "0+unknown"

"""Weights load without running code: safetensors export, weights_only checkpoints, a real
malicious pickle refused, and mismatched checkpoints reported by model, key and shape."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from safetensors import safe_open

from mlnotes_zoo import create_model, export, load_checkpoint
from mlnotes_zoo.errors import ZooError
from mlnotes_zoo.train import _task, main
from mlnotes_zoo.weights import (
    IncompatibleWeightsError,
    UnreadableWeightsError,
    UnsafeCheckpointError,
)

TINY = ["model=vae", "model.net.hidden=32", "model.net.latent_dim=4", "logger=none",
        "callbacks.pictures=null", "callbacks.progress_bar=null", "test=false"]


class _RunsCode:
    """Unpickling this calls os.system — what a booby-trapped checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _fake_ckpt(path: Path, name: str, **kwargs) -> Path:
    """A checkpoint in train.py's layout (spec in hyper_parameters, net.* tensors)."""
    net = create_model(name, **kwargs)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"net": net.zoo_spec}}, path)
    return path


def test_weight_file_errors_are_zoo_errors():
    # train.py catches ZooError once and exits with its code, without a traceback
    for error in (IncompatibleWeightsError, UnreadableWeightsError, UnsafeCheckpointError):
        assert issubclass(error, ZooError) and issubclass(error, ValueError)
        assert error.exit_code == 2


@pytest.fixture
def trained(make_cfg, tmp_path) -> Path:
    main(make_cfg(*TINY))
    return tmp_path / "checkpoints" / "last.ckpt"


def test_export_to_safetensors_and_back(trained, tmp_path):
    out = export(trained, tmp_path / "vae.safetensors")
    with safe_open(str(out), framework="pt") as f:
        spec = json.loads(f.metadata()["mlnotes_zoo.net"])
    assert spec == {"name": "vae", "in_shape": [1, 8, 8], "latent_dim": 4, "hidden": 32,
                    "arch": "mlp", "likelihood": "bernoulli"}
    assert not out.read_bytes().startswith(b"PK")  # not a zip of pickles: plain safetensors
    from_file = create_model("vae", weights=out)
    from_ckpt = create_model("vae", weights=trained)
    reference = load_checkpoint(trained)
    for net in (from_file, from_ckpt, load_checkpoint(out)):
        for key, value in reference.state_dict().items():
            torch.testing.assert_close(net.state_dict()[key], value, rtol=0, atol=0)
    x = reference.example_input(3)
    with torch.no_grad():
        torch.testing.assert_close(from_file.eval().encode(x), reference.encode(x))


@pytest.mark.parametrize("layout", ["torch.save", "raw pickle"])
def test_a_pickle_that_would_run_code_is_refused(tmp_path, layout):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.ckpt"
    payload = {"state_dict": {}, "hyper_parameters": {"net": {"name": "vae"}},
               "x": _RunsCode(marker)}
    if layout == "torch.save":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=2))
    for load in (lambda: create_model("vae", weights=evil), lambda: load_checkpoint(evil),
                 lambda: export(evil, tmp_path / "out.safetensors")):
        with pytest.raises(UnsafeCheckpointError, match="refused to load") as info:
            load()
        assert not marker.exists()
    if layout == "torch.save":
        assert "calls posix.system" in str(info.value) or "calls nt.system" in str(info.value)
    # the trap is real: a full unpickle runs it (in a child process)
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(evil)!r}, "
                    "weights_only=False)"], check=False, capture_output=True, timeout=60)
    assert marker.exists()


def test_resuming_from_a_malicious_checkpoint_is_refused(make_cfg, tmp_path, capsys):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": _RunsCode(marker)}, evil)
    with pytest.raises(SystemExit) as info:
        _task(make_cfg(*TINY, f"ckpt_path={evil}"))
    assert info.value.code == 2
    assert "refused to load" in capsys.readouterr().err
    assert not marker.exists()


def test_resuming_a_run_dir_whose_last_checkpoint_is_malicious_is_refused(make_cfg, tmp_path,
                                                                          capsys):
    # resume=auto in a run dir with a CSV log: the log's rows are kept up to the checkpoint's
    # step, which reads the checkpoint too
    marker = tmp_path / "code_ran"
    (tmp_path / "checkpoints").mkdir()
    torch.save({"state_dict": {}, "global_step": 3, "x": _RunsCode(marker)},
               tmp_path / "checkpoints" / "last.ckpt")
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text("epoch,step,train/loss\n0,1,1.0\n")
    with pytest.raises(SystemExit) as info:
        _task(make_cfg(*[a for a in TINY if a != "logger=none"], "logger=csv", "resume=auto"))
    assert info.value.code == 2
    assert "refused to load" in capsys.readouterr().err
    assert not marker.exists()


def test_weights_of_another_model_name_both_models(tmp_path):
    ckpt = _fake_ckpt(tmp_path / "gan.ckpt", "dcgan", in_shape=[1, 8, 8], latent_dim=8,
                      gen_width=8, disc_width=8)
    with pytest.raises(IncompatibleWeightsError, match="holds a 'dcgan' network .* not 'vae'"):
        create_model("vae", weights=ckpt)
    out = tmp_path / "gan.safetensors"
    export(ckpt, out)
    with pytest.raises(IncompatibleWeightsError, match="'dcgan'"):
        create_model("vae", weights=out)


def test_other_kwargs_name_the_kwarg_and_the_shapes(tmp_path):
    ckpt = _fake_ckpt(tmp_path / "vae.ckpt", "vae", in_shape=[1, 8, 8], latent_dim=4, hidden=32)
    with pytest.raises(IncompatibleWeightsError) as info:
        create_model("vae", weights=ckpt, latent_dim=8)
    message = str(info.value)
    assert "saved with latent_dim=4 (asked 8)" in message
    assert "differ in shape: encoder.net.5.weight (8, 32) in the file vs (16, 32) in the model" \
        in message
    assert len(message) < 800  # a sentence, not a wall of keys
    # a state dict without spec: missing/unexpected keys are counted, a few named
    plain = tmp_path / "plain.pt"
    torch.save({"encoder.net.1.weight": torch.zeros(32, 64), "junk": torch.zeros(1)}, plain)
    with pytest.raises(IncompatibleWeightsError, match=r"tensor\(s\) are missing from the file: "
                       r".*more\).*1 tensor\(s\) in the file are not in the model: junk"):
        create_model("vae", weights=plain, in_shape=[1, 8, 8], latent_dim=4, hidden=32)


def test_resume_with_an_incompatible_config_names_the_mismatch(make_cfg, tmp_path, capsys):
    first = make_cfg(*TINY)
    with open_dict(first):
        first.paths.output_dir = str(tmp_path / "first")
    main(first)
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    with pytest.raises(IncompatibleWeightsError, match=r"saved with hidden=32 \(asked 64\)"):
        main(make_cfg(*TINY, "model.net.hidden=64", f"ckpt_path={last}"))
    with pytest.raises(SystemExit) as info:
        _task(make_cfg("model=realnvp", "logger=none", "callbacks.pictures=null", "test=false",
                       f"ckpt_path={last}"))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the checkpoint holds a 'vae' network") and "'realnvp'" in err
    assert len(err.splitlines()) == 1


def test_truncated_or_foreign_files_are_reported(tmp_path):
    ckpt = _fake_ckpt(tmp_path / "vae.ckpt", "vae", in_shape=[1, 8, 8], latent_dim=4, hidden=32)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a tensor file")
    for path in (cut, junk):
        with pytest.raises(UnreadableWeightsError, match=str(path.name)):
            create_model("vae", weights=path)
    with pytest.raises(FileNotFoundError):
        create_model("vae", weights=tmp_path / "absent.ckpt")


def _safetensors_of(path: Path, name: str, **kwargs) -> Path:
    from safetensors.torch import save_file

    net = create_model(name, **kwargs)
    save_file({k: v.detach().clone() for k, v in net.state_dict().items()}, str(path),
              metadata={"mlnotes_zoo.net": json.dumps(net.zoo_spec)})
    return path


@pytest.mark.parametrize("name", ["vae.safetensors", "vae.ckpt"])
def test_resuming_from_a_safetensors_file_says_it_is_weights_not_a_checkpoint(make_cfg, tmp_path,
                                                                             capsys, name):
    weights = _safetensors_of(tmp_path / name, "vae", in_shape=[1, 8, 8], latent_dim=4,
                              hidden=32)
    with pytest.raises(SystemExit) as info:
        _task(make_cfg(*TINY, f"ckpt_path={weights}"))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {weights} is a safetensors weights file"), err
    assert "not a training checkpoint" in err and "create_model(<name>, weights=" in err, err
    assert len(err.splitlines()) == 1 and "KeyError" not in err, err


def _lightning_checkpoint(path: Path, module, *, family: bool = True) -> Path:
    """What Trainer.save_checkpoint writes for the module (its weights and hyper-parameters,
    and the family ZooModule.on_save_checkpoint records; ``family=False``: an older file)."""
    import pytorch_lightning as pl

    checkpoint = {"pytorch-lightning_version": pl.__version__, "epoch": 0, "global_step": 0,
                  "state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    if not family:
        del checkpoint[module.FAMILY_KEY]
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("family", [True, False], ids=["recorded family", "older checkpoint"])
def test_load_from_checkpoint_of_another_family_names_both(tmp_path, family):
    from mlnotes_zoo.lit.gan import LitGAN
    from mlnotes_zoo.lit.vae import LitVAE

    gan = LitGAN(net=create_model("dcgan", in_shape=[1, 8, 8], latent_dim=8, gen_width=8,
                                  disc_width=8))
    path = _lightning_checkpoint(tmp_path / "gan.ckpt", gan, family=family)
    with pytest.raises(IncompatibleWeightsError) as info:
        LitVAE.load_from_checkpoint(path)
    message = str(info.value)
    assert f"{path} is a checkpoint of " in message and "a 'dcgan' network" in message
    assert "not of LitVAE" in message and "LitVAE takes no objective" in message
    assert ("LitGAN.load_from_checkpoint" if family else "model=dcgan") in message
    assert len(message.splitlines()) == 1
    # its own class loads it, weights and all
    loaded = LitGAN.load_from_checkpoint(path)
    for key, value in gan.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_load_from_checkpoint_checks_the_network_spec_before_building(tmp_path):
    from mlnotes_zoo.lit.vae import LitVAE

    vae = LitVAE(net=create_model("vae", in_shape=[1, 8, 8], latent_dim=2, hidden=4))
    path = _lightning_checkpoint(tmp_path / "vae.ckpt", vae)
    loaded = LitVAE.load_from_checkpoint(path)
    assert loaded.net.zoo_spec == vae.net.zoo_spec
    checkpoint = torch.load(path, weights_only=True)
    for hidden, error, text in [(10**12, UnsafeCheckpointError, "refused to build vae"),
                                (-1, UnreadableWeightsError, "hidden=-1: must be an integer"),
                                (8, IncompatibleWeightsError, "differ in shape")]:
        checkpoint["hyper_parameters"]["net"]["hidden"] = hidden
        torch.save(checkpoint, path)
        with pytest.raises(error, match=text):
            LitVAE.load_from_checkpoint(path)
    with pytest.raises(UnreadableWeightsError, match="is a safetensors weights file"):
        LitVAE.load_from_checkpoint(_safetensors_of(tmp_path / "vae.safetensors", "vae"))

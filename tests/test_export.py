"""export.py: every export is checked against PyTorch, refusals name their reason, the README's
export table is what the code does, and each file carries the run's model card."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors import safe_open

from mlnotes_zoo import create_model, list_models
from mlnotes_zoo.export import (
    CARD_KEY,
    ONNX_CARD_KEY,
    PT2_CARD_FILE,
    ExportMismatchError,
    ExportRefusedError,
    export_checkpoint,
    export_network,
)
from mlnotes_zoo.model_card import CARD_NAME, ModelCard, file_sha256, read_model_card, render

REPO = Path(__file__).resolve().parents[1]

# Small versions of the exportable networks (the structure of the default configs).
TINY = {
    "vae": dict(hidden=16, latent_dim=2),
    "vqvae": dict(hidden=8, residual_hidden=4, num_residual_blocks=1, num_codes=8,
                  embedding_dim=4),
    "dcgan": dict(latent_dim=4, gen_width=4, disc_width=4),
    "wgan_gp": dict(latent_dim=4, gen_width=4, disc_width=4),
    "realnvp": dict(num_scales=1, num_couplings=1, hidden=8),
    "glow": dict(num_levels=1, depth=1, hidden=8),
    "simclr": dict(widths=[4, 8], proj_hidden=8, proj_dim=4),
    "supcon": dict(widths=[4, 8], proj_hidden=8, proj_dim=4),
    "gmm": dict(num_components=2),
    "kmeans": dict(num_clusters=2),
    "pondernet": dict(max_steps=3, hidden=8),
    "transformer": dict(dim=16, num_heads=2, encoder_layers=1, decoder_layers=1),
    "gpt": dict(dim=16, num_heads=2, num_layers=1, max_len=16),
    "ddpm": dict(widths=[8], groups=4, heads=2),
    "ddpm_inpaint": dict(widths=[8], groups=4, heads=2),
    "dae": dict(hidden=16, latent_dim=4),
}


def _readme_table() -> dict[str, dict[str, bool]]:
    """{model: {format: claimed to work}} from the README's export table."""
    text = (REPO / "README.md").read_text()
    section = text.split("### Exporting a model", 1)[1].split("\n### ", 1)[0]
    claims: dict[str, dict[str, bool]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[0].startswith("`"):
            continue
        for model in re.findall(r"`(\w+)`", cells[0]):
            claims[model] = {fmt: cell == "✓" for fmt, cell in
                             zip(("onnx", "torch_export", "safetensors"), cells[1:4], strict=True)}
    return claims


CLAIMS = _readme_table()
CELLS = [(m, f) for m in sorted(CLAIMS) if m in list_models()
         for f in ("onnx", "torch_export")]
FAST = {("dcgan", "onnx"), ("dcgan", "torch_export"), ("vae", "onnx"), ("act", "torch_export")}


def _tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, **TINY.get(name, {}))


def test_the_readme_table_has_every_registered_model_and_safetensors_for_all():
    assert set(list_models()) <= set(CLAIMS), set(list_models()) - set(CLAIMS)
    assert all(c["safetensors"] for c in CLAIMS.values())


@pytest.mark.parametrize(
    ("name", "fmt"),
    [pytest.param(m, f, marks=[] if (m, f) in FAST else [pytest.mark.slow]) for m, f in CELLS])
def test_each_readme_claim_holds(name, fmt, tmp_path):
    """✓: the export passes its check (outputs within 1e-4 of PyTorch's on example_input, at
    two batch sizes); ✗: it is refused in one line that says why."""
    out = tmp_path / f"{name}.{fmt}"
    if CLAIMS[name][fmt]:
        report = export_network(_tiny(name), fmt, out)
        assert out.is_file() and report.max_abs_diff <= 1e-4 * 10  # relative above |1|
        assert report.outputs >= 1 and report.batch_sizes == (2, 3) and report.dynamic_batch
    else:
        with pytest.raises(ExportRefusedError) as err:
            export_network(_tiny(name), fmt, out)
        message = str(err.value)
        assert message.startswith(f"{name}: no {fmt} export: ") and "\n" not in message
        assert not out.exists()


def test_onnx_file_runs_in_onnx_runtime_like_pytorch_at_another_batch_size(tmp_path):
    """Independent of export.py's own check: the saved file, fresh inputs, batch 5."""
    net = _tiny("vqvae").eval()
    out = tmp_path / "vqvae.onnx"
    export_network(net, "onnx", out)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.rand(5, 1, 8, 8)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = net(x)
    assert [o.name for o in session.get_outputs()] == list(expected._fields)
    for value, ref in zip(got, expected, strict=True):
        torch.testing.assert_close(torch.from_numpy(value).to(ref.dtype), ref, atol=1e-4,
                                   rtol=1e-4)


def test_a_difference_above_the_tolerance_fails_the_check_and_keeps_no_file(tmp_path,
                                                                             monkeypatch):
    import mlnotes_zoo.export as export

    real = export._pt2_runner

    def shifted(by):
        def runner(path):
            run = real(path)
            return lambda args: [t + by if i == 0 else t for i, t in enumerate(run(args))]
        return runner

    monkeypatch.setattr(export, "_pt2_runner", shifted(5e-5))  # within 1e-4: passes
    report = export_network(_tiny("dcgan"), "torch_export", tmp_path / "ok.pt2")
    assert 4e-5 < report.max_abs_diff < 6e-5
    monkeypatch.setattr(export, "_pt2_runner", shifted(2e-4))
    out = tmp_path / "bad.pt2"
    with pytest.raises(ExportMismatchError, match=r"dcgan \(torch_export, batch 2\): output "
                                                  r"images differs from PyTorch's by up to"):
        export_network(_tiny("dcgan"), "torch_export", out)
    assert not out.exists() and not list(tmp_path.glob(".bad.pt2.*"))


# -- checkpoints, model cards, the command line ------------------------------------------------
def _run_dir(tmp_path: Path, name: str, *, card_sha: str | None = "match") -> Path:
    """A run dir with a checkpoint of a tiny network and (optionally) its MODEL_CARD.md."""
    net = _tiny(name)
    ckpt = tmp_path / "run" / "checkpoints" / "epoch=1-step=4.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"hyper_parameters": {"net": dict(net.zoo_spec)},
                "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, ckpt)
    if card_sha is not None:
        card = ModelCard(model=name, network=dict(net.zoo_spec), module="m", module_doc="",
                         data="d", data_doc="", data_config={}, checkpoint=str(ckpt.name),
                         checkpoint_sha256=file_sha256(ckpt) if card_sha == "match" else card_sha,
                         checkpoint_metric="val/loss", checkpoint_mode="min", epochs=2,
                         commit="abc", version="0", metrics={"test/loss": 1.25})
        (tmp_path / "run" / CARD_NAME).write_text(render(card))
    return ckpt


def test_every_format_carries_the_runs_model_card(tmp_path):
    ckpt = _run_dir(tmp_path, "dcgan")
    card = (tmp_path / "run" / CARD_NAME).read_text()
    onnx_file = export_checkpoint(ckpt, "onnx").path
    assert onnx_file == ckpt.with_suffix(".onnx")
    props = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert props[ONNX_CARD_KEY] == card
    st = export_checkpoint(ckpt, "safetensors").path
    with safe_open(str(st), framework="pt") as f:
        assert f.metadata()[CARD_KEY] == card
    pt2 = export_checkpoint(ckpt, "torch_export").path
    extra = {PT2_CARD_FILE: ""}
    torch.export.load(pt2, extra_files=extra)
    assert extra[PT2_CARD_FILE] == card


def test_a_checkpoint_the_card_is_not_about_gets_its_own_card(tmp_path):
    ckpt = _run_dir(tmp_path, "dcgan", card_sha="0" * 64)  # the card of another checkpoint
    st = export_checkpoint(ckpt, "safetensors", tmp_path / "w.safetensors").path
    with safe_open(str(st), framework="pt") as f:
        facts = read_model_card(f.metadata()[CARD_KEY])
    assert facts["checkpoint_sha256"] == file_sha256(ckpt) and facts["test_metrics"] == {}
    assert facts["model"] == "dcgan" and facts["network"]["gen_width"] == 4


def test_safetensors_export_rebuilds_the_same_network(tmp_path):
    ckpt = _run_dir(tmp_path, "vae", card_sha=None)
    report = export_checkpoint(ckpt, "safetensors")
    assert report.max_abs_diff == 0.0
    rebuilt = create_model("vae", weights=report.path)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    for key, value in rebuilt.state_dict().items():
        assert torch.equal(value, state[f"net.{key}"])


@pytest.mark.slow  # a python process of its own: ~5 s of imports
def test_command_line_exports_and_checks(tmp_path):
    ckpt = _run_dir(tmp_path, "vae")  # a Lightning-style name with "="
    done = subprocess.run([sys.executable, str(REPO / "export.py"), f"ckpt_path={ckpt}",
                           "format=torch_export"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"exported vae to .*epoch=1-step=4\.pt2 \(torch_export; any batch "
                        r"size\); checked on example_input \(batch 2 and 3\): max \|the saved "
                        r"program - PyTorch\| = \S+ over 4 output tensor\(s\)\n", done.stdout)
    assert ckpt.with_suffix(".pt2").is_file()


@pytest.mark.parametrize(("args", "words"), [
    (["format=onnx", "ckpt_path=CKPT"], "error: vae: no onnx export: its eval-mode forward "
                                        "samples (decoded, z change with the random seed)"),
    (["format=tflite", "ckpt_path=CKPT"],
     "error: format=tflite: must be one of onnx, torch_export, safetensors"),
    (["format=onnx"], "error: ckpt_path= is required"),
    (["ckpt_path=NONE"], "no such file"),
    (["ckpt_path=CKPT", "opset=18"], "opset"),
])
def test_command_line_refuses_in_one_line_with_exit_2(tmp_path, capsys, args, words):
    from mlnotes_zoo.export import cli

    ckpt = _run_dir(tmp_path, "vae")
    args = [a.replace("CKPT", str(ckpt)).replace("NONE", str(tmp_path / "none.ckpt"))
            for a in args]
    with pytest.raises(SystemExit) as exit_info:
        cli(args)
    err = capsys.readouterr()
    assert exit_info.value.code == 2 and err.out == ""
    assert words in err.err and len(err.err.strip().splitlines()) <= 2, err.err

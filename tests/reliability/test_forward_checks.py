"""Bad input to a network: a tensor of the wrong rank, size or dtype is a ValueError that
names the argument and the expected shape (models/shared.py), for every registered model."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from mlnotes_zoo import create_model, list_models
from mlnotes_zoo.models.shared import check_tensor, format_shape

# "<Class>.forward: <arg> must be a <kind> tensor of shape (B, 1, 8, 8); got <dtype> (...)"
MESSAGE = re.compile(r"^\w+\.(forward|infer|encode): \S+ must be an? [\w ()]*tensor of shape "
                     r"\([^)]*\); got ")

_models: dict[str, torch.nn.Module] = {}


def _model(name: str) -> torch.nn.Module:
    if name not in _models:
        torch.manual_seed(0)
        _models[name] = create_model(name).eval()
    return _models[name]


def _args(name: str) -> list:
    x = _model(name).example_input(2)
    return list(x) if isinstance(x, tuple) else [x]


def _call(model: torch.nn.Module, args: list) -> None:
    with torch.no_grad():
        model(*args)


def _assert_rejected(model: torch.nn.Module, args: list, expected: str | None = None) -> str:
    with pytest.raises(ValueError) as err:
        _call(model, args)
    message = str(err.value)
    assert MESSAGE.match(message), message
    if expected is not None:
        assert expected in message, message
    return message


def _generic_corruptions(args: list) -> list[tuple[str, list]]:
    """For each tensor argument: one more dimension, one fewer, and the other dtype."""
    out = []
    for i, a in enumerate(args):
        if isinstance(a, list) and isinstance(a[0], Tensor):  # detection's list of images
            first = a[0]
            out += [(f"arg{i}[0] extra dim", [[first[None], *a[1:]], *args[i + 1:]]),
                    (f"arg{i}[0] missing dim", [[first[0], *a[1:]], *args[i + 1:]]),
                    (f"arg{i}[0] integer", [[(first * 255).long(), *a[1:]], *args[i + 1:]])]
            continue
        if not isinstance(a, Tensor):
            continue
        wrong_dtype = a.float() if not a.is_floating_point() else (a * 10).long()
        for label, bad in (("extra dim", a[None]), ("missing dim", a[..., 0]),
                           ("dtype", wrong_dtype)):
            out.append((f"arg{i} {label}", [*args[:i], bad, *args[i + 1:]]))
    return out


GENERIC = [(name, label, i) for name in list_models()
           for i, (label, _) in enumerate(_generic_corruptions(_args(name)))]


@pytest.mark.parametrize("name, label, index", GENERIC, ids=[f"{n}-{lb}" for n, lb, _ in GENERIC])
def test_wrong_rank_or_dtype_is_a_value_error_naming_the_expected_shape(name, label, index):
    model = _model(name)
    _, args = _generic_corruptions(_args(name))[index]
    _assert_rejected(model, args)


def _image_like(shape):
    return torch.rand(*shape)


# Wrong sizes in a dimension the network fixes, and batch sizes that disagree between inputs.
# name -> [(what, make bad args from the model, text the message must contain)]
WRONG_SIZES: dict[str, list[tuple[str, Callable, str]]] = {
    "vae": [("width", lambda m: [_image_like((2, 1, 8, 9))], "(B, 1, 8, 8)"),
            ("channels", lambda m: [_image_like((2, 3, 8, 8))], "(B, 1, 8, 8)")],
    "vqvae": [("height", lambda m: [_image_like((2, 1, 6, 8))], "(B, 1, 8, 8)")],
    "realnvp": [("channels", lambda m: [_image_like((2, 3, 8, 8))], "(B, 1, 8, 8)")],
    "glow": [("width", lambda m: [_image_like((2, 1, 8, 16))], "(B, 1, 8, 8)")],
    "dcgan": [("latent size", lambda m: [torch.randn(2, m.latent_dim + 1)],
               "(B, 64)")],
    "wgan_gp": [("latent size", lambda m: [torch.randn(2, 3)], "(B, 64)")],
    "simclr": [("channels", lambda m: [_image_like((2, 3, 8, 8))], "(B, 1, H, W)")],
    "supcon": [("channels", lambda m: [_image_like((2, 2, 16, 16))], "(B, 1, H, W)")],
    "pondernet": [("features", lambda m: [torch.ones(2, m.in_features - 1)], "(B, 16)")],
    "transformer": [
        ("batch mismatch", lambda m: [m.example_input(2)[0], m.example_input(3)[1]],
         "tgt_in must be an integer tensor of shape (2, T)"),
        ("float target", lambda m: [m.example_input(2)[0], m.example_input(2)[1].float()],
         "(2, T)")],
    "gpt": [("one token stream", lambda m: [m.example_input(2)[0]], "(B, T)")],
    "ctc": [("lengths batch", lambda m: [m.example_input(2)[0], torch.tensor([4000])],
             "lengths must be an integer tensor of shape (2,)"),
            ("float lengths", lambda m: [m.example_input(2)[0], m.example_input(2)[1].float()],
             "(2,)"),
            ("stereo", lambda m: [torch.zeros(2, 2, 4000)], "(B, N)")],
    "conformer_ctc": [("lengths 2-D", lambda m: [m.example_input(2)[0],
                                                 m.example_input(2)[1][:, None]], "(2,)")],
    "faster_rcnn": [
        ("grey image", lambda m: [[torch.rand(1, 64, 64)]], "(3, H, W)"),
        ("batched grey", lambda m: [torch.rand(2, 1, 64, 64)], "(B, 3, H, W)")],
    "mask_rcnn": [
        ("grey image", lambda m: [[torch.rand(1, 64, 64)]], "(3, H, W)")],
    "odenet": [("width", lambda m: [_image_like((2, 1, 8, 6))], "(B, 1, 8, 8)")],
    "cnf": [("dimension", lambda m: [torch.randn(2, m.dim + 1)], "(B, 2)")],
    "latent_ode": [("observation size",
                    lambda m: [torch.randn(2, 20, 3), *m.example_input(2)[1:]], "(B, T, 2)"),
                   ("mask length", lambda m: [*m.example_input(2)[:2], torch.ones(2, 19)],
                    "observed must be a float tensor of shape (2, 20)")],
    "rnn_seq2seq": [
        ("batch mismatch", lambda m: [m.example_input(2)[0], m.example_input(3)[1]],
         "tgt_in must be an integer tensor of shape (2, T)"),
        ("float source", lambda m: [m.example_input(2)[0].float(), m.example_input(2)[1]],
         "(B, S)")],
    "act": [("features", lambda m: [torch.ones(2, m.in_features + 1)], "(B, 16)")],
    "ddpm": [("channels", lambda m: [_image_like((2, 3, 8, 8)), m.example_input(2)[1]],
              "(B, 1, 8, 8)"),
             ("timesteps batch", lambda m: [m.example_input(2)[0], torch.tensor([1, 2, 3])],
              "t must be an int64 tensor of shape (2,)")],
    "ddpm_inpaint": [("channels", lambda m: [_image_like((2, 3, 8, 8)), m.example_input(2)[1]],
                      "(B, 1, 8, 8)"),
                     ("timesteps batch", lambda m: [m.example_input(2)[0], torch.tensor([1])],
                      "t must be an int64 tensor of shape (2,)")],
    "dae": [("width", lambda m: [_image_like((2, 1, 8, 9))], "(B, 1, 8, 8)"),
            ("mask rank", lambda m: [_image_like((2, 1, 8, 8)), torch.ones(2, 8, 8)],
             "mask must be a float tensor of shape (*, *, 8, 8)"),
            ("mask batch", lambda m: [_image_like((2, 1, 8, 8)), torch.ones(3, 1, 8, 8)],
             "mask must be a float tensor of shape (1 or 2, 1 or 1, 8, 8)")],
    "gmm": [("width", lambda m: [_image_like((2, 1, 8, 9))], "(B, 1, 8, 8)")],
    "kmeans": [("flattened", lambda m: [_image_like((2, 64))], "(B, 1, 8, 8)")],
    "hubert": [("lengths batch", lambda m: [m.example_input(2)[0], torch.tensor([4000])],
                "lengths must be an integer tensor of shape (2,)"),
               ("stereo", lambda m: [torch.zeros(2, 2, 4000)], "(B, N)")],
    "hubert_ctc": [("lengths batch", lambda m: [m.example_input(2)[0], torch.tensor([4000])],
                    "lengths must be an integer tensor of shape (2,)")],
}

SIZE_CASES = [(name, i) for name, cases in WRONG_SIZES.items() for i in range(len(cases))]


def test_every_model_has_wrong_size_cases():
    assert set(WRONG_SIZES) == set(list_models())


@pytest.mark.parametrize("name, index", SIZE_CASES,
                         ids=[f"{n}-{WRONG_SIZES[n][i][0]}" for n, i in SIZE_CASES])
def test_wrong_size_is_a_value_error_naming_the_expected_shape(name, index):
    model = _model(name)
    _, make, expected = WRONG_SIZES[name][index]
    _assert_rejected(model, make(model), expected)


@pytest.mark.parametrize("name", ["faster_rcnn", "mask_rcnn"])
def test_detection_targets_are_checked_in_training_mode(name):
    model = create_model(name).train()
    images, targets = model.example_input(2)
    bad_targets = [
        ("boxes xywh+score", lambda t: {**t, "boxes": torch.zeros(len(t["labels"]), 5)},
         "'boxes'] must be a float tensor of shape (N, 4)"),
        ("float labels", lambda t: {**t, "labels": t["labels"].float()}, "'labels']"),
        ("labels count", lambda t: {**t, "labels": t["labels"][:1]}, "'labels']"),
    ]
    if name == "mask_rcnn":
        bad_targets.append(("masks missing", lambda t: {k: v for k, v in t.items()
                                                        if k != "masks"}, "'masks']"))
    for _, corrupt, expected in bad_targets:
        _assert_rejected(model, [images, [corrupt(targets[0]), targets[1]]], expected)
    with pytest.raises(ValueError, match="one dict per image"):
        model(images, targets[:1])


def test_valid_inputs_still_pass_in_every_dtype_the_models_accept():
    vae = _model("vae")
    _call(vae, [torch.rand(3, 1, 8, 8, dtype=torch.float64).float()])
    gpt = _model("gpt")
    _call(gpt, [torch.randint(0, 256, (2, 5), dtype=torch.int32)])


def test_check_tensor_shares_named_sizes_and_formats_the_expected_shape():
    sizes = check_tensor(torch.zeros(4, 3), "a", ("B", 3), where="M.forward")
    assert sizes == {"B": 4}
    with pytest.raises(ValueError, match=r"b must be a float tensor of shape \(4, \*\); got "
                                         r"torch.float32 \(5, 2\)"):
        check_tensor(torch.zeros(5, 2), "b", ("B", None), where="M.forward", sizes=sizes)
    with pytest.raises(ValueError, match="got list"):
        check_tensor([1, 2], "c", ("B",), where="M.forward")
    assert format_shape(("N",)) == "(N,)"

"""Transformer step time against peers at equal size, and model FLOP utilisation.

``transformer``: one training step (forward, backward, AdamW) of
  * our pre-norm block stack (:class:`mlnotes_zoo.models.transformer.TransformerBlock` × L,
    final LayerNorm) vs ``torch.nn.TransformerEncoder`` of the same width, heads, MLP,
    GELU, norm placement and depth, on the same float input (loss = mean square output);
  * our :class:`~mlnotes_zoo.models.transformer.GPT` vs Hugging Face ``transformers``'
    ``GPT2LMHeadModel`` built from a ``GPT2Config`` (random init, no weights) of the same
    vocabulary, context, width, heads, depth, tied embeddings, on the same tokens
    (next-token cross-entropy).
Ratios are ours / peer step time (target <= 1.0): medians over interleaved rounds, since
timings on a shared machine drift. MFU = model FLOPs per second / the measured float32
matmul peak of this machine (a 2048² × 2048² ``torch.mm``); model FLOPs per token =
6·N (non-embedding parameters) + 12·L·T·d (attention scores and values), as in PaLM's
appendix B, for forward + backward.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

SIZES = dict(vocab=256, dim=256, heads=4, layers=4, seq=128, batch=8)


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times)


class _OurStack(nn.Module):
    def __init__(self, dim: int, heads: int, layers: int) -> None:
        super().__init__()
        from mlnotes_zoo.models.transformer import TransformerBlock

        self.blocks = nn.ModuleList(TransformerBlock(dim=dim, num_heads=heads,
                                                     mlp_hidden=4 * dim, norm_first=True)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def _torch_stack(dim: int, heads: int, layers: int) -> nn.Module:
    layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(dim),
                                 enable_nested_tensor=False)


def _step_fn(model: nn.Module, loss_fn):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss = loss_fn(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _time_pair(steps: dict, n_steps: int, rounds: int) -> dict[str, float]:
    for step in steps.values():  # warm-up
        step()
        step()
    per = {k: [] for k in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(n_steps):
                step()
            per[name].append((time.perf_counter() - start) / n_steps)
    return {k: statistics.median(v) for k, v in per.items()}


def _n_params(model: nn.Module, exclude_embeddings: bool = False) -> int:
    skip = set()
    if exclude_embeddings:
        skip = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def bench_transformer(n_steps: int = 2, rounds: int = 3) -> dict:
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    from mlnotes_zoo.models.transformer import GPT

    s = SIZES
    torch.manual_seed(0)
    tokens_per_step = s["batch"] * s["seq"]
    peak = matmul_peak_flops()

    # -- block stack vs torch.nn.TransformerEncoder ---------------------------------------
    x = torch.randn(s["batch"], s["seq"], s["dim"])
    ours, peer = _OurStack(s["dim"], s["heads"], s["layers"]), _torch_stack(
        s["dim"], s["heads"], s["layers"])
    assert _n_params(ours) == _n_params(peer)
    t_enc = _time_pair({"ours": _step_fn(ours, lambda m: m(x).square().mean()),
                        "torch": _step_fn(peer, lambda m: m(x).square().mean())},
                       n_steps, rounds)

    # -- GPT vs Hugging Face GPT-2 ----------------------------------------------------------
    idx = torch.randint(0, s["vocab"], (s["batch"], s["seq"] + 1))
    inp, tgt = idx[:, :-1], idx[:, 1:]
    gpt = GPT(vocab_size=s["vocab"], dim=s["dim"], num_heads=s["heads"],
              num_layers=s["layers"], max_len=s["seq"], dropout=0.0, positional="learned")
    config = GPT2Config(vocab_size=s["vocab"], n_positions=s["seq"], n_embd=s["dim"],
                        n_layer=s["layers"], n_head=s["heads"], resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu",
                        tie_word_embeddings=True, bos_token_id=None, eos_token_id=None)
    hf = GPT2LMHeadModel(config)
    attn_impl = getattr(hf.config, "_attn_implementation", None)

    def gpt_loss(m):
        return F.cross_entropy(m(inp).flatten(0, 1), tgt.flatten())

    def hf_loss(m):
        return F.cross_entropy(m(input_ids=inp).logits.flatten(0, 1), tgt.flatten())

    t_gpt = _time_pair({"ours": _step_fn(gpt, gpt_loss), "hf": _step_fn(hf, hf_loss)},
                       n_steps, rounds)

    def flops_per_step(model: nn.Module) -> float:
        n = _n_params(model, exclude_embeddings=True)
        return tokens_per_step * (6 * n + 12 * s["layers"] * s["seq"] * s["dim"])

    enc_flops = flops_per_step(ours)
    gpt_flops = flops_per_step(gpt) + 6 * tokens_per_step * s["dim"] * s["vocab"]  # head
    return {
        "sizes": s,
        "threads": torch.get_num_threads(),
        "matmul_peak_gflops": round(peak / 1e9, 1),
        "encoder_stack": {
            "params": _n_params(ours),
            "step_s_ours": round(t_enc["ours"], 5),
            "step_s_torch_nn_TransformerEncoder": round(t_enc["torch"], 5),
            "ratio_ours_over_torch": round(t_enc["ours"] / t_enc["torch"], 3),
            "mfu_ours": round(enc_flops / t_enc["ours"] / peak, 3),
            "mfu_torch": round(enc_flops / t_enc["torch"] / peak, 3),
        },
        "gpt": {
            "params_ours": _n_params(gpt),
            "params_hf": _n_params(hf),
            "hf_attn_implementation": attn_impl,
            "step_s_ours": round(t_gpt["ours"], 5),
            "step_s_hf_gpt2": round(t_gpt["hf"], 5),
            "ratio_ours_over_hf": round(t_gpt["ours"] / t_gpt["hf"], 3),
            "mfu_ours": round(gpt_flops / t_gpt["ours"] / peak, 3),
            "mfu_hf": round(gpt_flops / t_gpt["hf"] / peak, 3),
        },
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "target_ratio": 1.0,
    }


BENCHMARKS = {"transformer": bench_transformer}

"""Decoding CTC posteriors into label sequences: greedy and prefix beam search.

Both read (B, T, C) log-probabilities with blank = 0 and return label ids (1..C−1) per
utterance; :func:`ids_to_text` maps them to characters. Torch and the standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["BLANK", "collapse", "greedy_decode", "prefix_beam_search", "ids_to_text",
           "text_to_ids"]

BLANK = 0  # index of the blank token in every CTC output of the zoo

_NEG_INF = float("-inf")


def collapse(path: Sequence[int], blank: int = BLANK) -> list[int]:
    """The CTC collapse map B: merge repeats, then drop blanks. B(a a ∅ a b b) = (a, a, b)."""
    out: list[int] = []
    previous = None
    for token in path:
        if token != previous and token != blank:
            out.append(int(token))
        previous = token
    return out


def greedy_decode(log_probs: Tensor, lengths: Tensor | None = None) -> list[list[int]]:
    """Best path decoding: B(argmax_c p_t(c)) for each utterance of a (B, T, C) batch."""
    best = log_probs.argmax(dim=-1).cpu()  # (B, T)
    lengths = _lengths(log_probs, lengths)
    return [collapse(best[b, : lengths[b]].tolist()) for b in range(best.shape[0])]


def _logaddexp(a: float, b: float) -> float:
    if a == _NEG_INF:
        return b
    if b == _NEG_INF:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def prefix_beam_search_one(
    log_probs: Tensor, beam_width: int = 8, token_beam: int | None = None
) -> list[tuple[tuple[int, ...], float]]:
    """CTC prefix beam search (Hannun et al. 2014) over one (T, C) utterance.

    Keeps, for each label prefix ℓ, the log-probability of all frame paths that collapse to
    ℓ split by their last frame: p_b(ℓ) (ended in blank) and p_nb(ℓ) (ended in ℓ's last
    label), so that paths collapsing to the same prefix are summed, not competing:

        p_b(ℓ)   += p_t(∅) · (p_b(ℓ) + p_nb(ℓ))
        p_nb(ℓ)  += p_t(ℓ_last) · p_nb(ℓ)                 (repeat merges into ℓ)
        p_nb(ℓc) += p_t(c) · p_b(ℓ)            if c = ℓ_last (a repeat needs a blank between)
        p_nb(ℓc) += p_t(c) · (p_b(ℓ) + p_nb(ℓ)) otherwise

    Only the ``token_beam`` (default ``beam_width``) most likely labels of each frame are
    tried as extensions. Returns up to ``beam_width`` (prefix, log p(prefix | x)) pairs, best
    first. With width 1 it equals greedy decoding whenever each frame's best class has
    probability above ½ (then no other path can outweigh the best one).
    """
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    lp = log_probs.detach().float().cpu()
    num_tokens = lp.shape[-1] - 1
    k = min(token_beam or beam_width, num_tokens)
    top = lp[:, 1:].topk(k, dim=-1).indices.add(1).tolist()  # candidate labels per frame
    table = lp.tolist()
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, _NEG_INF)}
    for t, frame in enumerate(table):
        blank_lp = frame[BLANK]
        nxt: dict[tuple[int, ...], list[float]] = {}  # prefix -> [log p_b, log p_nb]
        for prefix, (p_b, p_nb) in beams.items():
            total = _logaddexp(p_b, p_nb)
            s = nxt.setdefault(prefix, [_NEG_INF, _NEG_INF])
            s[0] = _logaddexp(s[0], total + blank_lp)
            if prefix:
                s[1] = _logaddexp(s[1], p_nb + frame[prefix[-1]])
            for c in top[t]:
                ext = nxt.setdefault(prefix + (c,), [_NEG_INF, _NEG_INF])
                if prefix and c == prefix[-1]:
                    ext[1] = _logaddexp(ext[1], p_b + frame[c])
                else:
                    ext[1] = _logaddexp(ext[1], total + frame[c])
        ranked = sorted(nxt.items(), key=lambda kv: _logaddexp(*kv[1]), reverse=True)
        beams = {prefix: (p[0], p[1]) for prefix, p in ranked[:beam_width]}
    return [(prefix, _logaddexp(*p)) for prefix, p in beams.items()]


def prefix_beam_search(
    log_probs: Tensor,
    lengths: Tensor | None = None,
    *,
    beam_width: int = 8,
    token_beam: int | None = None,
) -> list[list[int]]:
    """The best prefix of :func:`prefix_beam_search_one` for each utterance of (B, T, C)."""
    lengths = _lengths(log_probs, lengths)
    return [
        list(prefix_beam_search_one(log_probs[b, : lengths[b]], beam_width, token_beam)[0][0])
        for b in range(log_probs.shape[0])
    ]


def ids_to_text(ids: Sequence[int], vocab: str) -> str:
    """Label ids (1..len(vocab)) to characters: id i is ``vocab[i - 1]`` (0 is the blank)."""
    return "".join(vocab[i - 1] for i in ids)


def text_to_ids(text: str, vocab: str) -> list[int]:
    """Characters to label ids; raises ValueError naming characters outside ``vocab``."""
    index = {ch: i + 1 for i, ch in enumerate(vocab)}
    missing = sorted({ch for ch in text if ch not in index})
    if missing:
        raise ValueError(f"characters {missing} of {text!r} are not in the vocabulary {vocab!r}")
    return [index[ch] for ch in text]


def _lengths(log_probs: Tensor, lengths: Tensor | None) -> list[int]:
    if lengths is None:
        return [log_probs.shape[1]] * log_probs.shape[0]
    return [int(n) for n in torch.as_tensor(lengths).tolist()]

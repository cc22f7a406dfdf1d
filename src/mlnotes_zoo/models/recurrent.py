"""The RNN encoder-decoder (Cho et al. 2014) with optional additive attention (Bahdanau, Cho &
Bengio 2015): greedy and beam-search decoding, scoring, and the sequence objective.

``shared/notes/004`` "RNN Encoder-Decoder": an encoder RNN reads x_1..x_T into a summary c; a
decoder RNN generates y_1..y_T' with

    h_t = f(h_{t−1}, y_{t−1}, c),      p(y_t | y_{<t}, c) = g(h_t, y_{t−1}, c),

trained to maximise log p(y | x); the trained model either generates (translates) or scores a
given pair, log p(y | x) (:meth:`RNNSeq2Seq.score`). ``shared/notes/003`` ("Transformers")
adds attention to remove the fixed-size bottleneck c: with ``attention="additive"`` each step
reads its own context c_t = Σ_j α_tj h_j, α_t = softmax_j(vᵀ tanh(W s_{t−1} + U h_j)), the
source padding masked out. "Teacher forcing in RNN" (``003``) is the training choice
``teacher_forcing`` of :meth:`RNNSeq2Seq.forward`: the true y_{t−1} (1.0), the model's own
sampled prediction (0.0), or a per-token mix (scheduled sampling, Bengio et al. 2015;
:func:`inverse_sigmoid_decay`).

Reads top-down: encoder, attention, decoder step, the model (forward, score, greedy and beam
search), then the objective. Sources and targets are right-padded with ``pad_id``.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mlnotes_zoo.constraints import NonNegativeInt, PositiveInt, UnitInterval
from mlnotes_zoo.models.shared import check_tensor
from mlnotes_zoo.registry import register_model

OBJECTIVE = ["sequence_log_prob", "inverse_sigmoid_decay", "length_penalty"]
__all__ = ["GRUEncoder", "AdditiveAttention", "Encoded", "RNNSeq2Seq", "BeamResult",
           *OBJECTIVE]

Attention = Literal["none", "additive"]


class Encoded(NamedTuple):
    memory: Tensor  # h_j, (B, S, He): encoder states, zeros at padding
    keys: Tensor | None  # U h_j, (B, S, A), projected once per source; None without attention
    padding: Tensor  # (B, S), True at padding
    summary: Tensor  # c, (B, He): the last states of both directions


class GRUEncoder(nn.Module):
    """Embedding → (bidirectional) GRU over the packed source: states h_j and summary c.

    ``pack_padded_sequence`` runs each source for its own length only, so padding never
    enters a state, and the backward direction starts at each source's last real token.
    """

    def __init__(self, *, vocab_size: int, embed_dim: int, hidden: int, num_layers: int,
                 bidirectional: bool, dropout: float, pad_id: int) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.rnn = nn.GRU(embed_dim, hidden, num_layers=num_layers, batch_first=True,
                          bidirectional=bidirectional,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.out_dim = hidden * (2 if bidirectional else 1)

    def forward(self, src: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """src (B, S) → (memory (B, S, He), padding (B, S), summary c (B, He))."""
        padding = src == self.pad_id
        lengths = (~padding).sum(1)
        if bool((lengths == 0).any()):
            raise ValueError("RNNSeq2Seq.encode: every source needs at least one token that "
                             "is not padding")
        x = self.dropout(self.embed(src))  # (B, S, E)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, last = self.rnn(packed)  # last: (layers · directions, B, H)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        # c: the last layer's final state of each direction (forward at x_T, backward at x_1)
        summary = torch.cat(list(last[-(2 if self.rnn.bidirectional else 1):]), dim=-1)
        return memory, padding, summary


class AdditiveAttention(nn.Module):
    """Bahdanau attention: e_tj = vᵀ tanh(W s_{t−1} + U h_j), α_t = softmax_j(e_t) over the
    real source tokens, c_t = Σ_j α_tj h_j."""

    def __init__(self, *, query_dim: int, key_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(query_dim, attention_dim, bias=False)  # W
        self.key = nn.Linear(key_dim, attention_dim)  # U (its bias is the score's bias)
        self.score = nn.Linear(attention_dim, 1, bias=False)  # v

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor,
                padding: Tensor) -> tuple[Tensor, Tensor]:
        """query s_{t−1} (B, Hd), keys U h_j (B, S, A), memory h_j (B, S, He), padding (B, S)
        → (context c_t (B, He), weights α_t (B, S), exactly 0 at padding)."""
        # e_tj = vᵀ tanh(W s_{t−1} + U h_j)
        energy = self.score(torch.tanh(self.query(query)[:, None] + keys)).squeeze(-1)  # (B, S)
        weights = torch.softmax(energy.masked_fill(padding, float("-inf")), dim=-1)
        # c_t = Σ_j α_tj h_j
        return torch.bmm(weights[:, None], memory).squeeze(1), weights


class BeamResult(NamedTuple):
    tokens: Tensor  # (B, L): the chosen hypothesis after bos, pad after its eos
    log_prob: Tensor  # (B,): log p(tokens | x), the sum over its tokens (eos included)
    score: Tensor  # (B,): log_prob / length_penalty(length), what the search maximised


@register_model("rnn_seq2seq")
class RNNSeq2Seq(nn.Module):
    """GRU encoder-decoder (Cho et al. 2014), with Bahdanau attention or the fixed summary c.

    Decoder step t (notes ``004``): s_t = GRU([e(y_{t−1}); c_t], s_{t−1}) and
    p(y_t | ·) = softmax(W_o tanh(W_g [s_t; e(y_{t−1}); c_t])) (a deep output as in both
    papers, tanh in place of their maxout). c_t = c for every t without attention, else the
    attention context computed from s_{t−1}. s_0 = tanh(W_init c).

    ``forward(src (B, S), tgt_in (B, T))`` → logits (B, T, V) of the next target tokens;
    ``score(src, tgt)`` → log p(y | x) (B,); ``generate`` greedy; ``beam_search``.
    Decoding never emits ``pad`` or ``bos``.

    Args:
        vocab_size: tokens, specials included (shared by source and target ids).
        embed_dim: size of the source and target token embeddings (not shared).
        hidden: GRU state size of the encoder (each direction) and of the decoder.
        encoder_layers: stacked encoder GRU layers.
        bidirectional: encoder reads the source both ways (memory and c are then 2·hidden).
        attention: ``additive`` (Bahdanau) or ``none`` (the decoder sees only c).
        attention_dim: size of the attention's hidden layer (W s + U h).
        dropout: on embeddings and between encoder layers.
        max_len: longest target generated when ``max_new_tokens`` is not given.
        pad_id, bos_id, eos_id: special tokens.
    """

    def __init__(
        self,
        *,
        vocab_size: PositiveInt = 44,
        embed_dim: PositiveInt = 64,
        hidden: PositiveInt = 128,
        encoder_layers: PositiveInt = 1,
        bidirectional: bool = True,
        attention: Attention = "additive",
        attention_dim: PositiveInt = 64,
        dropout: UnitInterval = 0.0,
        max_len: PositiveInt = 64,
        pad_id: NonNegativeInt = 0,
        bos_id: NonNegativeInt = 1,
        eos_id: NonNegativeInt = 2,
    ) -> None:
        super().__init__()
        self.vocab_size, self.max_len, self.attention_kind = vocab_size, max_len, attention
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.encoder = GRUEncoder(vocab_size=vocab_size, embed_dim=embed_dim, hidden=hidden,
                                  num_layers=encoder_layers, bidirectional=bidirectional,
                                  dropout=dropout, pad_id=pad_id)
        context = self.encoder.out_dim
        self.init_state = nn.Linear(context, hidden)  # s_0 = tanh(W_init c)
        self.attention = AdditiveAttention(query_dim=hidden, key_dim=context,
                                           attention_dim=attention_dim) \
            if attention == "additive" else None
        self.tgt_embed = nn.Embedding(vocab_size, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.cell = nn.GRUCell(embed_dim + context, hidden)  # s_t = f(s_{t−1}, y_{t−1}, c_t)
        self.readout = nn.Linear(hidden + embed_dim + context, hidden)  # g(s_t, y_{t−1}, c_t)
        self.output = nn.Linear(hidden, vocab_size)

    # -- encoder and one decoder step -------------------------------------------------------
    def encode(self, src: Tensor) -> Encoded:
        """src (B, S) right-padded token ids → :class:`Encoded` (keys projected once)."""
        check_tensor(src, "src", ("B", "S"), kind="int", where="RNNSeq2Seq.encode")
        memory, padding, summary = self.encoder(src)
        keys = self.attention.key(memory) if self.attention is not None else None
        return Encoded(memory, keys, padding, summary)

    def initial_state(self, encoded: Encoded) -> Tensor:
        return torch.tanh(self.init_state(encoded.summary))  # s_0 (B, Hd)

    def step(self, y_prev: Tensor, state: Tensor,
             encoded: Encoded) -> tuple[Tensor, Tensor, Tensor | None]:
        """One decoder step: (y_{t−1} (B,), s_{t−1} (B, Hd)) → (logits (B, V), s_t,
        attention weights α_t (B, S) or None)."""
        emb = self.dropout(self.tgt_embed(y_prev))  # (B, E)
        if self.attention is not None:  # c_t from s_{t−1}
            context, weights = self.attention(state, encoded.keys, encoded.memory,
                                              encoded.padding)
        else:  # the fixed summary: the bottleneck
            context, weights = encoded.summary, None
        state = self.cell(torch.cat([emb, context], dim=-1), state)
        hidden = torch.tanh(self.readout(torch.cat([state, emb, context], dim=-1)))
        return self.output(hidden), state, weights

    # -- training and scoring ------------------------------------------------------------------
    def forward(self, src: Tensor, tgt_in: Tensor, *, teacher_forcing: float = 1.0,
                return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Next-token logits (B, T, V) for tgt_in (B, T) = bos, y_1, …, y_{T−1}.

        ``teacher_forcing``: the probability, per example and step t ≥ 1, of feeding the true
        y_{t−1}; otherwise the decoder gets a token sampled from its own previous output
        (Bengio et al. 2015), without a gradient through the sample. 1.0 = teacher forcing,
        0.0 = free running. With ``return_attention`` also the weights α (B, T, S) (zeros
        without attention).
        """
        where = "RNNSeq2Seq.forward"
        sizes = check_tensor(src, "src", ("B", "S"), kind="int", where=where)
        check_tensor(tgt_in, "tgt_in", ("B", "T"), kind="int", sizes=sizes, where=where)
        if not 0.0 <= teacher_forcing <= 1.0:
            raise ValueError(f"{where}: teacher_forcing must be in [0, 1], got {teacher_forcing}")
        encoded = self.encode(src)
        state = self.initial_state(encoded)
        logits, weights = [], []
        y_prev = tgt_in[:, 0]
        for t in range(tgt_in.shape[1]):
            if t > 0:
                y_prev = tgt_in[:, t]
                if teacher_forcing < 1.0:
                    own = torch.multinomial(torch.softmax(logits[-1].detach().float(), -1),
                                            1).squeeze(1)
                    use_true = torch.rand(y_prev.shape, device=y_prev.device) < teacher_forcing
                    y_prev = torch.where(use_true, y_prev, own)
            step_logits, state, alpha = self.step(y_prev, state, encoded)
            logits.append(step_logits)
            weights.append(alpha if alpha is not None else encoded.padding.new_zeros(
                encoded.padding.shape, dtype=step_logits.dtype))
        out = torch.stack(logits, dim=1)  # (B, T, V)
        return (out, torch.stack(weights, dim=1)) if return_attention else out

    def score(self, src: Tensor, tgt: Tensor) -> Tensor:
        """log p(y | x) (B,) of targets tgt (B, T) = bos, y_1, …, eos, pad…: the notes'
        second use of the model (Σ_t log p(y_t | y_{<t}, x) over the non-padding tokens)."""
        return sequence_log_prob(self(src, tgt[:, :-1]), tgt[:, 1:], pad_id=self.pad_id)

    # -- decoding ------------------------------------------------------------------------------
    def _never(self) -> list[int]:
        return [self.pad_id, self.bos_id]  # tokens decoding never emits

    @torch.no_grad()
    def generate(self, src: Tensor, *, max_new_tokens: int | None = None) -> Tensor:
        """Greedy decoding: target tokens (B, ≤ max_new_tokens) after bos, pad after eos."""
        max_new_tokens = max_new_tokens or self.max_len - 1
        encoded = self.encode(src)
        state = self.initial_state(encoded)
        b = src.shape[0]
        y_prev = torch.full((b,), self.bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(b, dtype=torch.bool, device=src.device)
        out = []
        for _ in range(max_new_tokens):
            logits, state, _ = self.step(y_prev, state, encoded)
            logits[:, self._never()] = float("-inf")
            y_prev = logits.argmax(-1).masked_fill(done, self.pad_id)
            out.append(y_prev)
            done |= y_prev == self.eos_id
            if bool(done.all()):
                break
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def beam_search(self, src: Tensor, *, beam_size: int = 4, max_new_tokens: int | None = None,
                    alpha: float = 1.0) -> BeamResult:
        """Beam search with length normalisation (Wu et al. 2016): keeps the ``beam_size``
        prefixes of highest log p, and returns for each source the finished hypothesis (ended
        by eos; an unfinished one only if none finished) of highest
        log p(y | x) / length_penalty(|y|, alpha). alpha = 0: no normalisation.

        A finished hypothesis stays in the beam, continued by pad at no cost. Width 1 is
        greedy decoding.
        """
        if not 1 <= beam_size <= self.vocab_size - len(self._never()):
            raise ValueError(f"beam_size must be in 1..{self.vocab_size - 2}, got {beam_size}")
        max_new_tokens = max_new_tokens or self.max_len - 1
        b, k, v = src.shape[0], beam_size, self.vocab_size
        encoded = Encoded(*(t.repeat_interleave(k, dim=0) if t is not None else None
                            for t in self.encode(src)))
        state = self.initial_state(encoded)  # (B·K, Hd)
        y_prev = torch.full((b * k,), self.bos_id, dtype=torch.long, device=src.device)
        log_prob = torch.full((b, k), float("-inf"), device=src.device)
        log_prob[:, 0] = 0.0  # one live hypothesis to start with
        finished = torch.zeros(b, k, dtype=torch.bool, device=src.device)
        length = torch.zeros(b, k, device=src.device)
        tokens = torch.zeros(b * k, 0, dtype=torch.long, device=src.device)
        only_pad = torch.full((v,), float("-inf"), device=src.device)
        only_pad[self.pad_id] = 0.0  # a finished hypothesis: pad, log-probability unchanged
        rows = torch.arange(b, device=src.device)[:, None] * k
        for _ in range(max_new_tokens):
            logits, state, _ = self.step(y_prev, state, encoded)
            step_lp = torch.log_softmax(logits.float(), dim=-1)  # the model's distribution
            step_lp[:, self._never()] = float("-inf")  # excluded, not renormalised
            step_lp = torch.where(finished.reshape(-1, 1), only_pad, step_lp).view(b, k, v)
            candidates = (log_prob[..., None] + step_lp).view(b, k * v)
            log_prob, index = candidates.topk(k, dim=-1)  # (B, K)
            beam, token = index // v, index % v
            source = (rows + beam).view(-1)  # the hypothesis each new one extends
            was_finished = finished.gather(1, beam)
            length = length.gather(1, beam) + (~was_finished).float()
            finished = was_finished | (token == self.eos_id)
            state, y_prev = state[source], token.view(-1)
            tokens = torch.cat([tokens[source], y_prev[:, None]], dim=1)
            if bool(finished.all()):
                break
        score = log_prob / length_penalty(length, alpha)
        any_finished = finished.any(dim=1, keepdim=True)
        best = torch.where(any_finished & ~finished, float("-inf"), score).argmax(dim=1)
        pick = torch.arange(b, device=src.device)
        return BeamResult(tokens.view(b, k, -1)[pick, best], log_prob[pick, best],
                          score[pick, best])

    def example_input(self, batch_size: int = 2) -> tuple[Tensor, Tensor]:
        """(src (B, 7), tgt_in (B, 9)) random tokens, the first example right-padded."""
        g = torch.Generator().manual_seed(0)
        src = torch.randint(3, self.vocab_size, (batch_size, 7), generator=g)
        tgt = torch.randint(3, self.vocab_size, (batch_size, 9), generator=g)
        tgt[:, 0] = self.bos_id
        src[0, 5:] = self.pad_id
        tgt[0, 6:] = self.pad_id
        return src, tgt


# -- the objective: log p(y | x), the teacher-forcing schedule, the length penalty ------------
def sequence_log_prob(logits: Tensor, targets: Tensor, *, pad_id: int) -> Tensor:
    """log p(y | x) = Σ_t log softmax(logits_t)[y_t] per sequence, (B,), over the targets
    (B, T) that are not ``pad_id``; logits (B, T, V)."""
    token_lp = torch.log_softmax(logits.float(), dim=-1).gather(
        -1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return token_lp.masked_fill(targets == pad_id, 0.0).sum(dim=1)


def inverse_sigmoid_decay(step: int | Tensor, k: float) -> Tensor:
    """Scheduled sampling's teacher-forcing probability at training step i (Bengio et al.
    2015): ε_i = k / (k + exp(i / k)), k ≥ 1; starts near 1 and decays to 0 around
    i ≈ k·ln k."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    i = torch.as_tensor(step, dtype=torch.float64)
    # ε_i = k / (k + exp(i/k)), as 1 / (1 + exp(i/k − ln k)) so that large i gives 0, not NaN
    return torch.sigmoid(math.log(k) - i / k)


def length_penalty(length: Tensor, alpha: float) -> Tensor:
    """GNMT's lp(Y) = ((5 + |Y|) / 6)^α (Wu et al. 2016): beam scores log p / lp(Y) compare
    hypotheses of different lengths; α = 0 gives 1 (raw log-probabilities)."""
    return ((5.0 + length) / 6.0) ** alpha


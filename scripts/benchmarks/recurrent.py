"""The recurrent family against its neighbours (issue 17): RNN seq2seq vs the Transformer at
equal parameters, ACT vs PonderNet at equal size.

``rnn_vs_transformer``: both networks trained from the same seed on the same
``seq2seq_numbers`` batches (batch 128, AdamW 2e-3, teacher-forced cross-entropy) for a fixed
number of steps; reported: the median train-step time, the total training time, and greedy
exact match on 500 held-out numbers after it, so accuracy per second of training. The RNN
(``hidden=96``, 243 k parameters) and the Transformer (the default ``dim=64``, 2 + 2 layers,
237 k) are within 3 % in size.

``act_vs_pondernet``: one training step (forward, loss, backward, Adam) and one evaluation
forward on a parity batch of 128 at the default sizes (GRU 128, input layer 128, at most 20
steps, 102 k vs 101 k parameters). ACT's forward stops once the whole batch halted (its
steps are set by the halting units); PonderNet's training forward always runs all N steps,
and its inference samples halting. The step counts each ran are reported with the times,
and ACT once more with its halting units started low enough to take about as many steps as
after the default training (N ≈ 6).
"""

from __future__ import annotations

import statistics
import time

import torch

from mlnotes_zoo import create_model
from mlnotes_zoo.data.parity import make_parity
from mlnotes_zoo.data.seq2seq_numbers import SeqNumbersDataModule
from mlnotes_zoo.models.act import act_loss
from mlnotes_zoo.models.pondernet import ponder_loss
from mlnotes_zoo.models.transformer import sequence_exact_match, token_cross_entropy


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def bench_rnn_vs_transformer(steps: int = 400, batch_size: int = 128,
                             held_out: int = 500) -> dict:
    dm = SeqNumbersDataModule(batch_size=batch_size, val_size=held_out)
    dm.setup()
    src_val, tgt_val = dm.splits["val"].tensors
    nets = {"rnn_seq2seq": dict(hidden=96, embed_dim=32, attention_dim=64),
            "transformer": dict(dim=64, num_heads=4, encoder_layers=2, decoder_layers=2,
                                dropout=0.0)}
    result: dict = {"steps": steps, "batch_size": batch_size, "held_out": held_out,
                    "threads": torch.get_num_threads()}
    for name, kwargs in nets.items():
        torch.manual_seed(0)
        net = create_model(name, **kwargs)
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.01)
        loader = torch.utils.data.DataLoader(dm.splits["train"], batch_size=batch_size,
                                             shuffle=True,
                                             generator=torch.Generator().manual_seed(0))
        times, done = [], 0
        while done < steps:
            for src, tgt in loader:
                start = time.perf_counter()
                logits = net(src, tgt[:, :-1])
                loss = token_cross_entropy(logits, tgt[:, 1:], ignore_index=0)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
                times.append(time.perf_counter() - start)
                done += 1
                if done == steps:
                    break
        net.eval()
        start = time.perf_counter()
        generated = net.generate(src_val, max_new_tokens=tgt_val.shape[1])
        decode_s = time.perf_counter() - start
        exact = float(sequence_exact_match(generated, tgt_val[:, 1:], pad_id=0).mean())
        train_s = sum(times)
        result[name] = {"params": _params(net), "step_ms": 1e3 * statistics.median(times),
                        "train_s": round(train_s, 2), "exact_match": exact,
                        "exact_match_per_train_s": exact / train_s,
                        "greedy_decode_s": round(decode_s, 3), "kwargs": kwargs}
    result["step_ratio_rnn_over_transformer"] = (result["rnn_seq2seq"]["step_ms"]
                                                 / result["transformer"]["step_ms"])
    return result


def _median_ms(fn, repeats: int = 15, inner: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) / inner)
    return 1e3 * statistics.median(times)


def bench_act_vs_pondernet(batch_size: int = 128, hidden: int = 128,
                           max_steps: int = 20) -> dict:
    x, y, _ = make_parity(batch_size, 16, 1, 12, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    act = create_model("act", hidden=hidden, embed_dim=128, max_steps=max_steps)
    pondernet = create_model("pondernet", hidden=hidden, embed_dim=128, max_steps=max_steps)
    opt_act = torch.optim.Adam(act.parameters(), lr=1e-4)
    opt_pn = torch.optim.Adam(pondernet.parameters(), lr=1e-4)

    def step_act():
        out = act(x)
        loss = act_loss(out.y_hat, y, out.ponder_cost, tau=1e-3)["loss"]
        opt_act.zero_grad(set_to_none=True)
        loss.backward()
        opt_act.step()

    def step_pondernet():
        loss = ponder_loss(*pondernet(x), y, beta=0.01, lambda_p=0.2)["loss"]
        opt_pn.zero_grad(set_to_none=True)
        loss.backward()
        opt_pn.step()

    with torch.no_grad():
        act_steps = float(act(x).steps.float().mean())
        pn_steps = pondernet.infer(x, generator=torch.Generator().manual_seed(0)).steps_run

    def infer_act():
        with torch.no_grad():
            act(x)

    def infer_pondernet():
        pondernet.infer(x, generator=torch.Generator().manual_seed(0))

    result = {
        "batch_size": batch_size, "hidden": hidden, "max_steps": max_steps,
        "threads": torch.get_num_threads(),
        "act": {"params": _params(act), "train_step_ms": _median_ms(step_act),
                "infer_ms": _median_ms(infer_act), "mean_steps_at_init": act_steps},
        "pondernet": {"params": _params(pondernet), "train_step_ms": _median_ms(step_pondernet),
                      "infer_ms": _median_ms(infer_pondernet),
                      "train_steps": max_steps, "infer_steps_run_at_init": pn_steps},
    }
    # ACT pondering as long as after the default training (N ≈ 6): halting units start at
    # σ(−1.6) ≈ 0.17 instead of Graves' σ(1)
    torch.manual_seed(0)
    act6 = create_model("act", hidden=hidden, embed_dim=128, max_steps=max_steps,
                        halting_bias=-1.6)
    opt_act6 = torch.optim.Adam(act6.parameters(), lr=1e-4)

    def step_act6():
        out = act6(x)
        loss = act_loss(out.y_hat, y, out.ponder_cost, tau=1e-4)["loss"]
        opt_act6.zero_grad(set_to_none=True)
        loss.backward()
        opt_act6.step()

    with torch.no_grad():
        act6_steps = float(act6(x).steps.float().mean())
    result["act_n6"] = {"train_step_ms": _median_ms(step_act6), "mean_steps": act6_steps,
                        "halting_bias": -1.6}
    result["act_n6"]["train_ms_per_ponder_step"] = result["act_n6"]["train_step_ms"] / act6_steps
    result["train_ratio_act_over_pondernet"] = (result["act"]["train_step_ms"]
                                                / result["pondernet"]["train_step_ms"])
    result["train_ratio_act_n6_over_pondernet"] = (result["act_n6"]["train_step_ms"]
                                                   / result["pondernet"]["train_step_ms"])
    # per ponder step: ACT's N is what its halting units say (about 2 at initialisation, 6
    # after the default training), PonderNet trains on all N = max_steps
    result["act"]["train_ms_per_ponder_step"] = result["act"]["train_step_ms"] / act_steps
    result["pondernet"]["train_ms_per_ponder_step"] = (result["pondernet"]["train_step_ms"]
                                                       / max_steps)
    return result


BENCHMARKS = {"rnn_vs_transformer": bench_rnn_vs_transformer,
              "act_vs_pondernet": bench_act_vs_pondernet}

"""Exact match against sequence length, one line per seq2seq checkpoint (issue 17, the
bottleneck measured): results/seq2seq_by_length.json, docs/figures/seq2seq_by_length.png.

    python scripts/seq2seq_by_length.py --table default \\
        --ckpt attention=outputs/rnn_seq2seq/<run>/checkpoints/<best>.ckpt \\
        --ckpt none=outputs/rnn_seq2seq/<run>/checkpoints/<best>.ckpt \\
        --ckpt transformer=outputs/transformer/<run>/checkpoints/<best>.ckpt
    python scripts/seq2seq_by_length.py --table t --ckpt a=A.ckpt data.test_size=500  # overrides
    python scripts/seq2seq_by_length.py --markdown          # the JSON's tables, nothing run

Each checkpoint is loaded as ``eval.py ckpt_path=<file>`` loads it (the overrides of the run
that wrote it, then the ones given here; weights_only; family, network and tensors checked:
:func:`mlnotes_zoo.evaluate.load_module`), and its test split decoded greedily by the module's
own ``greedy_exact_match`` — the decoding and exact match of its test step, so the overall
figure is the run's ``test/exact_match``. Examples are counted by target length in words (eos
not counted, as ``pictures/exact_match_by_length.json`` of an ``rnn_seq2seq`` run) and by source
length in digits. The checkpoints of one table must be tested on the same examples (the same
test split; a run with another ``data.train_size`` draws another one) and are refused
otherwise. ``--table NAME`` replaces that table in the JSON, keeping the others; the figure
draws every table of the JSON, one panel each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "seq2seq_by_length.json"
FIGURE = REPO / "docs" / "figures" / "seq2seq_by_length.png"
# model line colours of the figure, by name in order of first appearance in the JSON
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
           (140, 86, 75)]


def parse_ckpts(specs: list[str]) -> dict[str, Path]:
    """``NAME=PATH`` arguments -> {name: path}; a malformed, repeated or missing one is a
    :class:`~mlnotes_zoo.errors.UsageError` of one line."""
    from mlnotes_zoo.errors import UsageError

    ckpts: dict[str, Path] = {}
    for spec in specs:
        name, eq, path = spec.partition("=")
        name, path = name.strip(), path.strip()
        if not eq or not name or not path:
            raise UsageError(f"--ckpt {spec!r}: expected NAME=PATH, e.g. "
                             "attention=outputs/rnn_seq2seq/<run>/checkpoints/last.ckpt")
        if name in ckpts:
            raise UsageError(f"--ckpt {spec!r}: the name {name!r} is given twice; allowed: one "
                             "checkpoint per name")
        if not Path(path).is_file():
            raise UsageError(f"--ckpt {spec!r}: no such checkpoint file {path} (a .ckpt "
                             "written by train.py)")
        ckpts[name] = Path(path)
    if not ckpts:
        raise UsageError("no --ckpt NAME=PATH given (or --markdown to print the JSON's tables)")
    return ckpts


def load(path: Path, overrides: list[str]) -> tuple[Any, Any, dict, Any]:
    """(module in eval mode, DataModule set up for test, checkpoint, config) for ``path``."""
    from hydra.utils import instantiate

    from mlnotes_zoo.errors import UsageError
    from mlnotes_zoo.evaluate import compose_for_checkpoint, load_module
    from mlnotes_zoo.lit.transformer import LitSeq2Seq

    cfg = compose_for_checkpoint("eval", [f"ckpt_path={path}", *overrides])
    module, checkpoint = load_module(cfg)
    if not isinstance(module, LitSeq2Seq):
        name = checkpoint.get("hyper_parameters", {}).get("net", {}).get("name")
        raise UsageError(f"{path} holds a {name!r} network; allowed: a sequence-to-sequence "
                         "checkpoint (model=rnn_seq2seq or model=transformer)")
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    return module, datamodule, checkpoint, cfg


@torch.inference_mode()
def by_length(module: Any, loader: Any) -> dict[str, Any]:
    """Greedy exact match of every example of ``loader`` (the module's test-step decoding),
    overall and per target length (words) and source length (digits)."""
    from mlnotes_zoo.lit.rnn_seq2seq import ExactMatchByLength  # the test step's metric

    pad = module.net.pad_id
    targets, sources = (ExactMatchByLength(module.net.max_len + 1) for _ in range(2))
    total, correct_sum = 0, 0.0
    for src, tgt in loader:
        _, correct = module.greedy_exact_match(src, tgt)
        targets.update((tgt[:, 1:] != pad).sum(1) - 1, correct)  # words, eos not counted
        sources.update((src != pad).sum(1), correct)
        total += len(correct)
        correct_sum += float(correct.sum())
    return {"count": total, "exact_match": correct_sum / total,
            "by_target_words": targets.compute(), "by_source_digits": sources.compute()}


def train_command(path: Path) -> str | None:
    """``python train.py <overrides>`` of the run that wrote ``path``, when its Hydra files are
    beside it."""
    from mlnotes_zoo.evaluate import run_dir_of

    run_dir = run_dir_of(path)
    if run_dir is None:
        return None
    import yaml

    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or []
    return "python train.py " + " ".join(o for o in overrides if not o.startswith("hydra."))


def run_table(ckpts: dict[str, Path], overrides: list[str]) -> dict[str, Any]:
    """One table: every checkpoint on the same test examples."""
    from omegaconf import OmegaConf

    from mlnotes_zoo.errors import UsageError

    table: dict[str, Any] = {"models": {}}
    reference: tuple[str, torch.Tensor, torch.Tensor] | None = None
    for name, path in ckpts.items():
        module, datamodule, checkpoint, cfg = load(path, overrides)
        test = datamodule.splits["test"]
        src, tgt = test.tensors
        if reference is None:
            reference = (name, src, tgt)
            table["data"] = OmegaConf.to_container(cfg.data, resolve=True)
            table["data"].pop("_target_", None)
        elif not (src.shape == reference[1].shape and torch.equal(src, reference[1])
                  and tgt.shape == reference[2].shape and torch.equal(tgt, reference[2])):
            raise UsageError(f"--ckpt {name}={path} is tested on other numbers than "
                             f"{reference[0]} (its run's data differ: another train_size, "
                             "max_value or split_seed draws another test split); allowed: "
                             "checkpoints with the same test split, or data.* overrides "
                             "that make them the same")
        start = time.process_time()
        result = by_length(module, datamodule.test_dataloader())
        hparams = checkpoint.get("hyper_parameters", {})
        net = hparams.get("net", {})
        entry = {"checkpoint": str(path), "network": net.get("name"),
                 "attention": net.get("attention"),
                 "parameters": sum(p.numel() for p in module.net.parameters()),
                 "checkpoint_epoch": int(checkpoint.get("epoch", -1)) + 1,  # 1-based
                 "train_command": train_command(path), **result,
                 "eval_cpu_s": round(time.process_time() - start, 1)}
        table["models"][name] = entry
        print(f"{name}: exact match {100 * result['exact_match']:.2f} % of {result['count']} "
              f"({path})", flush=True)
    return table


# -- output ------------------------------------------------------------------------------
LENGTHS = {"by_target_words": "target words", "by_source_digits": "source digits"}


def markdown(result: dict[str, Any], key: str = "by_target_words") -> str:
    """The JSON's tables: a row per length (``key``: target words or source digits), n and
    each model's exact match."""
    parts = []
    for table_name, table in result["tables"].items():
        models = table["models"]
        names = list(models)
        first = models[names[0]][key]
        lines = [f"**{table_name}** (data: " + ", ".join(
            f"{k}={v}" for k, v in table.get("data", {}).items()
            if k not in ("batch_size", "num_workers")) + ")", "",
            f"| {LENGTHS[key]} | n | " + " | ".join(f"`{n}`" for n in names) + " |",
            "|---|---|" + "---|" * len(names)]
        for i, length in enumerate(first["length"]):
            cells = []
            for n in names:
                bucket = models[n][key]
                k = bucket["length"].index(length) if length in bucket["length"] else None
                cells.append("—" if k is None else f"{100 * bucket['exact_match'][k]:.1f} %")
            lines.append(f"| {length} | {first['count'][i]} | " + " | ".join(cells) + " |")
        lines.append(f"| all | {models[names[0]]['count']} | " + " | ".join(
            f"**{100 * models[n]['exact_match']:.2f} %**" for n in names) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def draw(result: dict[str, Any], min_count: int = 20) -> Any:
    """A PIL image: a column per table, a row per length (target words, source digits);
    exact match (%) against length, a line per model, and under each length the number of
    test examples of that length (the models of a table share them). Lengths with fewer than
    ``min_count`` test examples are left out (a point of 1 to 12 examples is noise; the JSON
    and the markdown tables keep them)."""
    from PIL import Image, ImageDraw, ImageFont

    try:  # Pillow >= 10.1: a scalable font
        font, small = ImageFont.load_default(size=12), ImageFont.load_default(size=9)
    except TypeError:
        font = small = ImageFont.load_default()
    tables = result["tables"]
    plot_w, plot_h, left, top, bottom, gap = 300, 200, 46, 40, 60, 24
    row_h = top + plot_h + bottom
    legend_h = 18 * max(len(t["models"]) for t in tables.values()) + 6
    names = list(dict.fromkeys(n for t in tables.values() for n in t["models"]))
    colour_of = {n: COLOURS[i % len(COLOURS)] for i, n in enumerate(names)}  # one per name
    panel_w = left + plot_w + gap
    image = Image.new("RGB", (panel_w * len(tables) + 8, row_h * len(LENGTHS) + legend_h),
                      "white")
    d = ImageDraw.Draw(image)
    def shown(bucket: dict[str, list]) -> list[tuple[int, int, float]]:
        return [(n, c, m) for n, c, m in zip(bucket["length"], bucket["count"],
                                             bucket["exact_match"], strict=True)
                if c >= min_count]

    lows = [m for t in tables.values() for e in t["models"].values() for key in LENGTHS
            for _, _, m in shown(e[key])]
    y_min = max(0.0, min(0.9, int(min(lows) * 10) / 10))  # the tenth below every point
    for r, (key, label) in enumerate(LENGTHS.items()):
        y0 = r * row_h + top
        for p, (table_name, table) in enumerate(tables.items()):
            x0 = p * panel_w + left
            first = next(iter(table["models"].values()))[key]
            counts = {n: c for n, c, _ in shown(first)}
            lo, hi = min(counts), max(max(counts), min(counts) + 1)

            def xy(length: float, value: float, x0: int = x0, y0: int = y0, lo: int = lo,
                   hi: int = hi) -> tuple[float, float]:
                return (x0 + (length - lo) / (hi - lo) * plot_w,
                        y0 + (1 - (value - y_min) / (1 - y_min)) * plot_h)

            d.rectangle([x0, y0, x0 + plot_w, y0 + plot_h], outline="black")
            for tick in range(11):
                _, y = xy(lo, y_min + tick * (1 - y_min) / 10)
                d.line([(x0 - 3, y), (x0, y)], fill="black")
                d.line([(x0 + 1, y), (x0 + plot_w - 1, y)], fill=(230, 230, 230))
                if tick % 2 == 0:
                    d.text((x0 - 42, y - 7), f"{100 * (y_min + tick * (1 - y_min) / 10):.0f}%",
                           fill="black", font=font)
            for length in range(lo, hi + 1):
                x, _ = xy(length, y_min)
                d.line([(x, y0 + plot_h), (x, y0 + plot_h + 3)], fill="black")
                d.text((x - 3, y0 + plot_h + 5), str(length), fill="black", font=font)
                n = str(counts.get(length, 0))
                d.text((x - 2.5 * len(n), y0 + plot_h + 21), n, fill=(90, 90, 90), font=small)
            d.text((x0 - 42, y0 + plot_h + 20), "n", fill=(90, 90, 90), font=font)
            d.text((x0, y0 + plot_h + 36), label, fill="black", font=font)
            data = table.get("data", {})
            d.text((x0, y0 - 34), f"{table_name}: greedy exact match by {label}", fill="black",
                   font=font)
            d.text((x0, y0 - 19), f"train {data.get('train_size')} numbers, largest "
                   f"{data.get('max_value')}; n >= {min_count}", fill=(90, 90, 90), font=font)
            for m, (name, entry) in enumerate(table["models"].items()):
                colour = colour_of[name]
                points = [xy(n, v) for n, _, v in shown(entry[key])]
                wide = 2 * (len(table["models"]) - m)  # the first widest: equal lines show
                if len(points) > 1:
                    d.line(points, fill=colour, width=wide)
                for x, y in points:
                    d.ellipse([x - wide, y - wide, x + wide, y + wide], fill=colour)
                if r == len(LENGTHS) - 1:
                    ly = row_h * len(LENGTHS) + 18 * m
                    d.line([(x0, ly + 7), (x0 + 20, ly + 7)], fill=colour, width=2)
                    d.text((x0 + 26, ly), f"{name}: {100 * entry['exact_match']:.2f} % overall",
                           fill="black", font=font)
    return image


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                          capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", action="append", default=[], metavar="NAME=PATH",
                        help="a checkpoint and its name in the table (repeatable, in order)")
    parser.add_argument("--table", default="default", help="the table's name in the JSON")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--figure", default=str(FIGURE),
                        help="the PNG of every table in --out ('' for none)")
    parser.add_argument("--min-count", type=int, default=20,
                        help="the figure leaves out lengths with fewer test examples")
    parser.add_argument("--threads", type=int, default=None, help="torch's threads")
    parser.add_argument("--markdown", action="store_true",
                        help="print the tables of --out as markdown; run nothing")
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides for every checkpoint, after its run's (data.*=...)")
    args = parser.parse_args(argv)
    from hydra.errors import HydraException

    from mlnotes_zoo.config import usage_error
    from mlnotes_zoo.errors import ZooError

    try:
        if args.markdown:
            result = json.loads(args.out.read_text())
            print(markdown(result) + "\n\n" + markdown(result, "by_source_digits"))
            return 0
        ckpts = parse_ckpts(args.ckpt)
        if args.threads:
            torch.set_num_threads(args.threads)
        table = run_table(ckpts, list(args.overrides))
    except (ZooError, HydraException) as err:
        err = err if isinstance(err, ZooError) else usage_error(err)
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    table.update(commit=_commit(), overrides=list(args.overrides),
                 command="python scripts/seq2seq_by_length.py " + " ".join(
                     [f"--table {args.table}"] + [f"--ckpt {c}" for c in args.ckpt]
                     + list(args.overrides)))
    result = json.loads(args.out.read_text()) if args.out.is_file() else {"tables": {}}
    result["tables"][args.table] = table
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)
    if args.figure:
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        draw(result, args.min_count).save(args.figure)
    print(markdown({"tables": {args.table: table}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""scripts/seq2seq_by_length.py: exact match per target and source length of a checkpoint,
checked against a recount in plain Python (words from number_to_words, strings compared) and
against the test step of the run that wrote the checkpoint."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("seq2seq_by_length",
                                               REPO / "scripts" / "seq2seq_by_length.py")
by_length_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(by_length_script)

# numbers 0..999 (1..5 words), a small attention model trained long enough to get some of
# the held-out numbers right and some wrong
RUN = ["model=rnn_seq2seq", "model.net.hidden=32", "model.net.embed_dim=16",
       "model.net.attention_dim=32", "model.beam_size=2", "data.max_value=999",
       "data.train_size=300", "data.val_size=20", "data.test_size=60", "data.batch_size=16",
       "trainer.max_epochs=8", "model.patience=null", "model.stop_at_exact_match=null"]


def _train(out: Path, overrides: list[str]) -> Path:
    """``train.main`` on ``overrides`` (shrunk as conftest's SHRINK, the whole test split) in
    ``out``."""
    from conftest import train_in

    return train_in(out, *overrides, "trainer.limit_test_batches=1.0", "logger=csv",
                    "callbacks.progress_bar=null", "callbacks.pictures=null")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny rnn_seq2seq run of train.main, tested on its whole test split, with the Hydra
    files eval.py reads beside its checkpoints (the run's overrides)."""
    out = _train(tmp_path_factory.mktemp("rnn_run"), [*RUN, "trainer.limit_train_batches=1.0"])
    _write_hydra_files(out, RUN)
    return out


def _write_hydra_files(run_dir: Path, overrides: list[str]) -> None:
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run_dir / ".hydra" / "config.yaml").write_text("{}\n")


def _best(run_dir: Path) -> Path:
    return Path(json.loads((run_dir / "metrics.json").read_text())["checkpoint"])


def _words(tokens: torch.Tensor) -> str:
    from mlnotes_zoo.data.seq2seq_numbers import decode_tokens

    return decode_tokens(tokens)


def test_buckets_equal_a_recount_and_the_test_step(run_dir, tmp_path, capsys):
    from mlnotes_zoo.data.seq2seq_numbers import SeqNumbersDataModule, number_to_words

    out, figure = tmp_path / "by_length.json", tmp_path / "by_length.png"
    code = by_length_script.main(["--table", "tiny", "--ckpt", f"attention={_best(run_dir)}",
                                  "--out", str(out), "--figure", str(figure)])
    assert code == 0
    entry = json.loads(out.read_text())["tables"]["tiny"]["models"]["attention"]
    report = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert 0 < entry["exact_match"] < 1, "the tiny model must be partly right to test anything"

    # the recount: every test number's words against the decoded greedy output, as strings
    data = SeqNumbersDataModule(max_value=999, train_size=300, val_size=20, test_size=60)
    numbers = data.draw_numbers()["test"]
    module, datamodule, _, _ = by_length_script.load(_best(run_dir), [])
    with torch.inference_mode():
        generated = [g for src, tgt in datamodule.test_dataloader()
                     for g in module.net.generate(src, max_new_tokens=tgt.shape[1])]
    right = [_words(g) == " ".join(number_to_words(n)) for g, n in
             zip(generated, numbers, strict=True)]
    assert entry["count"] == len(numbers) == 60
    assert entry["exact_match"] == pytest.approx(sum(right) / len(right), abs=1e-12)
    for key, size in (("by_target_words", lambda n: len(number_to_words(n))),
                      ("by_source_digits", lambda n: len(str(n)))):
        count, correct = Counter(), Counter()
        for n, ok in zip(numbers, right, strict=True):
            count[size(n)] += 1
            correct[size(n)] += ok
        bucket = entry[key]
        assert bucket["length"] == sorted(count), key
        assert bucket["count"] == [count[k] for k in sorted(count)], key
        assert bucket["exact_match"] == pytest.approx(
            [correct[k] / count[k] for k in sorted(count)], abs=1e-6), key
        # overall = the count-weighted mean of the buckets
        assert sum(c * m for c, m in zip(bucket["count"], bucket["exact_match"], strict=True)) \
            / sum(bucket["count"]) == pytest.approx(entry["exact_match"], abs=1e-6)

    # the test step of the run, on the same (best) checkpoint: overall and per target length
    assert entry["exact_match"] == pytest.approx(report["test/exact_match"], abs=1e-6)
    side = json.loads((run_dir / "pictures" / "exact_match_by_length.json").read_text())
    assert side["length"] == entry["by_target_words"]["length"]
    assert side["count"] == entry["by_target_words"]["count"]
    assert side["exact_match"] == pytest.approx(entry["by_target_words"]["exact_match"])
    assert entry["train_command"] == "python train.py " + " ".join(RUN)
    assert figure.stat().st_size > 0
    markdown = by_length_script.markdown(json.loads(out.read_text()))
    assert f"**{100 * entry['exact_match']:.2f} %**" in markdown


def _script_error(err: str) -> str:
    """The script's error: one line, the last on stderr. Lines before it can only be records
    that loggers of earlier in-process runs print here ('--- Logging error ---' of a closed
    train.log), not the script's; it prints exactly one line starting with 'error:'."""
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error:"), err
    assert sum(line.startswith("error:") for line in lines) == 1, err
    return lines[-1]


@pytest.mark.parametrize("spec, message", [
    ("attention", "expected NAME=PATH"),
    ("=x.ckpt", "expected NAME=PATH"),
    ("a=/no/such/file.ckpt", "no such checkpoint file"),
])
def test_bad_ckpt_arguments_are_one_line_and_exit_2(spec, message, tmp_path, capsys):
    code = by_length_script.main(["--ckpt", spec, "--out", str(tmp_path / "o.json")])
    err = _script_error(capsys.readouterr().err)
    assert code == 2
    assert err.startswith("error: --ckpt") and message in err
    assert not (tmp_path / "o.json").exists()


def test_a_repeated_name_and_another_test_split_are_refused(run_dir, tmp_path, capsys):
    ckpt = _best(run_dir)
    code = by_length_script.main(["--ckpt", f"a={ckpt}", "--ckpt", f"a={ckpt}",
                                  "--out", str(tmp_path / "o.json")])
    err = _script_error(capsys.readouterr().err)
    assert code == 2 and "given twice" in err
    # the same weights in a run dir whose data draw another test split
    other = tmp_path / "other_run"
    (other / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt, other / "checkpoints" / ckpt.name)
    _write_hydra_files(other, [*RUN, "data.train_size=200"])
    code = by_length_script.main(["--ckpt", f"a={ckpt}", "--ckpt",
                                  f"b={other / 'checkpoints' / ckpt.name}",
                                  "--out", str(tmp_path / "o.json"), "--figure", ""])
    err = _script_error(capsys.readouterr().err)
    assert code == 2 and "other numbers than a" in err
    assert not (tmp_path / "o.json").exists()


def test_a_checkpoint_of_another_family_is_refused(tmp_path, capsys):
    out = _train(tmp_path / "vae", ["model=vae", "model.net.hidden=16", "model.net.latent_dim=2"])
    code = by_length_script.main(["--ckpt", f"v={_best(out)}", "--out", str(tmp_path / "o.json")])
    err = _script_error(capsys.readouterr().err)
    assert code == 2 and "holds a 'vae' network" in err

"""seq2seq_numbers and text DataModules: words, held-out splits, byte windows from a file."""

from __future__ import annotations

import pytest
import torch

from mlnotes_zoo.data.seq2seq_numbers import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SeqNumbersDataModule,
    decode_tokens,
    encode_pairs,
    number_to_words,
)
from mlnotes_zoo.data.text import TextDataModule, default_corpus


@pytest.mark.parametrize("n, words", [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (20, "twenty"), (45, "forty five"),
    (100, "one hundred"), (115, "one hundred fifteen"), (4071, "four thousand seventy one"),
    (100010, "one hundred thousand ten"), (2000000, "two million"),
    (999999999, "nine hundred ninety nine million nine hundred ninety nine thousand "
                 "nine hundred ninety nine"),
])
def test_number_to_words(n, words):
    assert " ".join(number_to_words(n)) == words


def test_numbers_splits_are_disjoint_deterministic_and_encoded():
    dm = SeqNumbersDataModule(max_value=9999, train_size=3000, val_size=200, test_size=300)
    numbers = dm.draw_numbers()
    assert {k: len(v) for k, v in numbers.items()} == {"test": 300, "val": 200, "train": 3000}
    sets = [set(v) for v in numbers.values()]
    assert sum(map(len, sets)) == len(set.union(*sets))  # held out: no overlap
    assert numbers == SeqNumbersDataModule(max_value=9999, train_size=3000, val_size=200,
                                           test_size=300).draw_numbers()
    lengths = torch.tensor([len(str(n)) for n in numbers["train"]])
    assert (lengths == 1).sum() > 0 and (lengths == 4).sum() > 1000  # short ones too
    src, tgt = encode_pairs([4071, 5])
    assert decode_tokens(src[0]) == "4071" and decode_tokens(src[1]) == "5"
    assert decode_tokens(tgt[0, 1:]) == "four thousand seventy one"
    assert tgt[1].tolist()[:3] == [BOS_ID, tgt[1, 1].item(), EOS_ID]
    assert (tgt[1, 3:] == PAD_ID).all() and (src[1, 1:] == PAD_ID).all()


def test_text_datamodule_reads_a_utf8_file_as_byte_windows(tmp_path):
    text = "héllo wörld, " * 40  # 520 characters, 600 bytes
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    dm = TextDataModule(path=str(path), block_size=8, batch_size=4, train_samples=12,
                        val_fraction=0.1, test_fraction=0.1)
    dm.setup("fit")
    data = text.encode("utf-8")
    x, y = next(iter(dm.val_dataloader()))
    start = len(data) - 60 - 60
    assert x.shape == (4, 8)
    assert bytes(x[0].tolist()) == data[start : start + 8]
    torch.testing.assert_close(x[:, 1:], y[:, :-1])
    assert bytes(x[1].tolist()) == data[start + 8 : start + 16]  # non-overlapping windows
    assert sum(b.shape[0] for b, _ in dm.train_dataloader()) == 12


def test_text_default_corpus_ships_with_python_and_errors_name_the_file(tmp_path):
    assert len(default_corpus()) > 100_000
    with pytest.raises(FileNotFoundError, match="nosuch.txt"):
        TextDataModule(path=str(tmp_path / "nosuch.txt")).setup("fit")

"""The README's results table is generated from results/results.json (scripts/reproduce.py):
no figure in it is typed by hand, every registered model has a row, and the runner records
what a real run wrote."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from mlnotes_zoo import list_models

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("reproduce", REPO / "scripts" / "reproduce.py")
reproduce = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reproduce)


def _results() -> dict:
    return json.loads((REPO / "results" / "results.json").read_text())


def test_readme_table_is_the_generated_one():
    text = (REPO / "README.md").read_text()
    start, end = text.index(reproduce.BEGIN), text.index(reproduce.END) + len(reproduce.END)
    expected = reproduce.render_table(_results(), reproduce.load_specs())
    assert text[start:end] == expected, (
        "README results table differs from results/results.json: "
        "run python scripts/reproduce.py --table")


def test_readme_time_to_quality_table_is_the_generated_one():
    text = (REPO / "README.md").read_text()
    start = text.index(reproduce.TTQ_BEGIN)
    end = text.index(reproduce.TTQ_END) + len(reproduce.TTQ_END)
    expected = reproduce.render_time_to_quality(
        _results(), reproduce.load_specs(reproduce.TTQ_SPEC), reproduce.load_specs())
    assert text[start:end] == expected, (
        "README time-to-quality table differs from results/results.json: "
        "run python scripts/reproduce.py --table")


def test_time_to_quality_speed_up_and_slow_rows():
    def entry(wall, **extra):
        return {"returncode": 0, "wall_s": wall, "metrics": {"test/a": 0.5}, "seeds": [42],
                **extra}

    results = {"fast": entry(120.0), "slow": entry(301.0), "pinned": entry(100.0,
                                                                          omp_num_threads=1)}
    specs = [{"row": r, "metric": "{test/a:.1%}", "levers": "x\n  y",
              "before": {"time": "~10 min", "seconds": 600, "metric": "m", "source": "s"}}
             for r in results]
    text = reproduce.render_time_to_quality(results, specs, [{"row": r} for r in results])
    fast, slow, pinned = text.splitlines()[3:6]
    assert "**120 s** (50.0 %) | 5.0× | x y |" in fast
    assert "| 2.0× |" in slow and "not measured" in pinned and "⚠" in pinned
    assert text.splitlines()[-2] == ("Default runs not yet shown to finish in ≤ 5 minutes wall: "
                                     "`slow`, `pinned`.")


def test_every_registered_model_has_a_row():
    rows = {spec["row"] for spec in reproduce.load_specs()}
    assert set(list_models()) <= rows, sorted(set(list_models()) - rows)


def test_every_row_comes_from_its_own_command():
    for spec in reproduce.load_specs():
        entry = _results()[spec["row"]]
        assert entry["returncode"] == 0 and "extra_overrides" not in entry, spec["row"]
        assert entry["command"] == "python train.py " + " ".join(reproduce.command_for(spec["row"]))


@pytest.mark.parametrize(("mean", "std", "spec", "text"), [
    (0.99951, None, ".2%", "99.95 %"),
    (0.5, 0.0125, ".1%", "50.0 ± 1.2 %"),
    (-36420.31, None, ",.0f", "−36,420"),
    (16.348, 0.05, ".2f", "16.35 ± 0.05"),
    (2.0, None, ".0f", "2"),
])
def test_figure_format(mean, std, spec, text):
    assert format(reproduce.Figure(mean, std), spec) == text


def test_mean_and_std_over_seeds():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 2))
    runs = [{"seed": 42 + i, "returncode": 0, "wall_s": 10.0 + i, "cpu_s": 20.0,
             "peak_rss_mib": 1.0, "run_dir": "/nonexistent",
             "metrics": {"test/a": float(v[0]), "test/b": float(v[1])}}
            for i, v in enumerate(values)]
    entry = reproduce.summarise("vae", runs, None, 1, "abc")
    np.testing.assert_allclose([entry["metrics"]["test/a"], entry["metrics"]["test/b"]],
                               values.mean(0))
    np.testing.assert_allclose([entry["metrics_std"]["test/a"], entry["metrics_std"]["test/b"]],
                               values.std(0, ddof=1))
    assert entry["wall_s"] == 11.0 and entry["seeds"] == [42, 43, 44]
    row = reproduce.render_row({"row": "vae", "what": "w", "data": "d", "metric": "m",
                                "value": "{test/a:.3f}"}, entry)
    assert f"{values[:, 0].mean():.3f} ± {values[:, 0].std(ddof=1):.3f}".replace("-", "−") in row
    assert "mean of 3 seeds" in row


def test_a_row_naming_a_missing_metric_is_refused():
    entry = {"metrics": {"test/a": 1.0}, "wall_s": 1.0, "seeds": [42]}
    with pytest.raises(SystemExit, match="test/nope"):
        reproduce.render_row({"row": "vae", "what": "", "data": "", "metric": "",
                              "value": "{test/nope:.1f}"}, entry)


def test_runner_records_a_real_run(tmp_path):
    out = tmp_path / "results.json"
    assert reproduce.main(["kmeans", "--override", "trainer.max_epochs=2", "--out", str(out),
                           "--runs", str(tmp_path / "runs")]) == 0
    entry = json.loads(out.read_text())["kmeans"]
    written = json.loads((tmp_path / "runs" / "kmeans" / "metrics.json").read_text())
    assert entry["runs"][0]["metrics"] == written["metrics"] == entry["metrics"]
    assert entry["epochs"] == written["epochs"] == 2
    assert entry["wall_s"] > 0 and entry["cpu_s"] > 0 and entry["peak_rss_mib"] > 50
    assert "mlnotes_zoo" in entry["config"] and entry["extra_overrides"] == ["trainer.max_epochs=2"]
    with pytest.raises(SystemExit, match="no successful run of its command"):
        reproduce.render_table({"kmeans": entry}, [{"row": "kmeans", "what": "", "data": "",
                                                    "metric": "", "value": "{test/purity:.3f}"}])

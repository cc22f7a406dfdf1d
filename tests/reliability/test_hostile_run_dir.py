"""A run dir is data: ``resume=<run dir>`` replays only values of the zoo's config schema.

Someone else's run dir (a shared file system, a download) may hold a crafted
``.hydra/overrides.yaml``. Each case below plants one and resumes it through the CLI
(in-process; one through a ``python train.py`` subprocess): the run must be refused with
exit code 2 and one line naming the file, the override and what is allowed, before Hydra
writes anything into the run dir, and the callable the override names must never run. The
callables create a marker file when called (``builtins.open(file=<marker>, mode="w")``,
``pathlib.Path.touch``), so a case that ran code leaves the marker behind; the same planted
overrides ran ``builtins.open`` (exit 0 or a traceback) before replayed overrides were vetted.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from mlnotes_zoo.config import check_replayed, compose
from mlnotes_zoo.resume import ReplayError, expand_resume
from mlnotes_zoo.validation import validate_config

MARK = "@MARKER@"  # replaced by the test's marker path
OPEN = f"{{_target_:builtins.open,file:{MARK},mode:w}}"

# (id, the planted overrides, a text the refusal must contain)
CASES = [
    ("new callback with a target", ["+callbacks.x._target_=builtins.open",
                                    f"+callbacks.x.file={MARK}", "+callbacks.x.mode=w"],
     "callbacks.x._target_ is a _target_ key"),
    ("new logger unpickling", ["+logger.x._target_=pickle.load", f"+logger.x.file={MARK}"],
     "_target_ key"),
    ("a shipped callback's target replaced", ["callbacks.model_checkpoint._target_=builtins.open",
                                              f"callbacks.model_checkpoint.dirpath={MARK}"],
     "_target_ key"),
    ("a node given as a dict", [f"+callbacks.evil={OPEN}"], "config node (a dict)"),
    ("a shipped callback replaced by a dict", [f"callbacks.pictures={OPEN}"],
     "config node (a dict)"),
    ("trainer plugin with a target", [f"++trainer.plugins={OPEN}"], "config node (a dict)"),
    ("trainer plugin list with a target", [f"++trainer.plugins=[{OPEN}]"],
     "config node (a dict)"),
    ("trainer callbacks added as a value", ["+trainer.callbacks=builtins.open"],
     "callbacks is not a parameter of trainer"),
    ("a new node without a target", [f"+callbacks.x.file={MARK}"], "adds a new node"),
    ("Hydra callback", ["+hydra.callbacks.x._target_=pathlib.Path.touch",
                        f"+hydra.callbacks.x.self={MARK}"], "hydra.*"),
    ("Hydra's config search path", ["hydra.searchpath=[file:///tmp]"], "hydra.*"),
    ("Hydra launcher group", ["hydra/launcher=basic"], "hydra.*"),
    ("_partial_ key", ["model.optimizer._partial_=false"], "_..._ key"),
    ("a @package placement", ["callbacks@trainer=default"], "@package"),
    ("interpolation from the environment", ["data.root=${oc.env:HOME}"], "interpolation"),
    ("interpolation decoding a node",
     ["""model.net.latent_dim='${oc.decode:"{_target_: builtins.open}"}'"""], "interpolation"),
    ("now: into a path", ["callbacks.pictures.min_size=${now:%S}"], "interpolation"),
    ("checkpoints written elsewhere", [f"callbacks.last_checkpoint.dirpath={MARK}"],
     "where the run writes"),
    ("run output elsewhere", [f"paths.output_dir={MARK}"], "where the run writes"),
    ("a checkpoint name leaving the dir", ["callbacks.last_checkpoint.filename=../../../evil"],
     "where the run writes"),
    ("a logger name leaving the dir", [f"logger.csv.name={MARK}"], "where the run writes"),
    ("MLflow logging sent to a server",
     ["logger.mlflow.tracking_uri=http://127.0.0.1:9/", "logger=mlflow"], "where the run writes"),
    ("last.ckpt's callback deleted", ["~callbacks.last_checkpoint"], "deletes a node"),
    ("the trainer deleted", ["~trainer"], "deletes a node"),
    ("a sweep", ["model.net.latent_dim=2,4"], "sweep"),
    ("a group choice outside its group", ["model=../../../../../../../@RUN@/evil"],
     "model must be one of configs/model/"),
    ("an unknown group choice", ["callbacks=evil"], "callbacks must be one of"),
    ("an unparsable line", ["model.net.latent_dim=]["], "cannot be parsed"),
]


def _plant(run_dir: Path, overrides: list[str] | str, marker: Path) -> Path:
    """A run dir as train.py leaves it (a last.ckpt, Hydra's record) with ``overrides``."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    # a config a group choice could be pointed at: a callback that creates the marker
    (run_dir / "evil.yaml").write_text(yaml.safe_dump(
        {"callbacks": {"x": {"_target_": "builtins.open", "file": str(marker), "mode": "w"}}}))
    if not isinstance(overrides, str):
        overrides = yaml.safe_dump([o.replace(MARK, str(marker)).replace("@RUN@", str(run_dir))
                                    for o in overrides])
    (run_dir / ".hydra" / "overrides.yaml").write_text(overrides)
    return run_dir


def _assert_refused(run_cli, run_dir: Path, marker: Path, expected: str) -> str:
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    code, err = run_cli(f"resume={run_dir}", "trainer.max_epochs=1")
    assert code == 2, err
    assert err.startswith("error: resume: ") and len(err.splitlines()) == 1, err
    assert expected in err, err
    assert not marker.exists(), "the planted callable ran"
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before  # nothing written
    return err


@pytest.mark.parametrize("case, overrides, expected", CASES, ids=[c[0] for c in CASES])
def test_a_hostile_override_is_refused_and_nothing_runs(run_cli, tmp_path, case, overrides,
                                                        expected):
    marker = tmp_path / "marker"
    run_dir = _plant(tmp_path / "run", overrides, marker)
    err = _assert_refused(run_cli, run_dir, marker, expected)
    saved = str(run_dir / ".hydra" / "overrides.yaml")
    assert saved in err, err  # names the file ...
    assert "may only set values of the zoo's configs" in err, err  # ... and what is allowed
    planted = overrides[0].replace(MARK, str(marker)).replace("@RUN@", str(run_dir))
    assert repr(planted) in err, err  # ... and the override


# the file itself is not a list of overrides: refused as a whole
FILES = [
    ("a mapping, not a list", "callbacks:\n  x:\n    _target_: builtins.open\n",
     "must be a YAML list of override strings"),
    ("a list of mappings", "- {_target_: builtins.open}\n", "non-string items"),
    ("broken YAML", "- model=vae\n- [unclosed\n", "is not valid YAML"),
    ("a YAML tag that would run code", "- !!python/object/apply:pathlib.Path.touch ['@M@']\n",
     "is not valid YAML"),
]


@pytest.mark.parametrize("case, text, expected", FILES, ids=[c[0] for c in FILES])
def test_an_overrides_file_that_is_not_a_list_of_strings_is_refused(run_cli, tmp_path, case,
                                                                    text, expected):
    marker = tmp_path / "marker"
    run_dir = _plant(tmp_path / "run", text.replace("@M@", str(marker)), marker)
    err = _assert_refused(run_cli, run_dir, marker, expected)
    assert str(run_dir / ".hydra" / "overrides.yaml") in err, err


def test_a_symlink_out_of_the_run_dir_is_refused(run_cli, tmp_path):
    """Hydra rewrites .hydra/config.yaml when the run starts: through a planted link it would
    overwrite another file."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    run_dir = _plant(tmp_path / "run", ["model=vae"], tmp_path / "marker")
    os.symlink(victim, run_dir / ".hydra" / "config.yaml")
    err = _assert_refused(run_cli, run_dir, tmp_path / "marker", "is a symlink to")
    assert str(run_dir / ".hydra" / "config.yaml") in err
    assert victim.read_text() == "keep me\n"


def test_train_py_refuses_a_hostile_run_dir_in_a_subprocess(run_train, tmp_path):
    marker = tmp_path / "marker"
    run_dir = _plant(tmp_path / "run", CASES[0][1], marker)
    out = run_train(f"resume={run_dir}", cwd=tmp_path, timeout=180)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.startswith("error: resume: refusing '+callbacks.x._target_=builtins.open'")
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not marker.exists() and not (run_dir / "train.log").exists()
    assert not (run_dir / ".hydra" / "config.yaml").exists()


def test_a_run_dirs_ordinary_overrides_are_replayed(tmp_path):
    """What train.py itself writes passes: group choices, values, +key= of a parameter the
    zoo checks, switching a callback or logger off, a quoted path; then the composed config
    validates like a command line's."""
    saved = ["model=gpt", "data.batch_size=8", "+trainer.limit_train_batches=3",
             "++trainer.max_steps=20", "+callbacks.model_checkpoint.every_n_epochs=1",
             "++model.net.dropout=0.1", "~callbacks.pictures", "~logger.tensorboard",
             "callbacks.progress_bar=null", "+model.optimizer.betas=[0.9,0.95]",
             "data.path='/data/a=b.txt'", "seed=7"]
    run_dir = _plant(tmp_path / "run", saved, tmp_path / "marker")
    argv = expand_resume([f"resume={run_dir}", "trainer.max_epochs=1"], check=check_replayed)
    assert argv[:len(saved)] == saved
    assert argv[len(saved):] == [f"resume={run_dir}", "trainer.max_epochs=1",
                                 f"hydra.run.dir={run_dir}"]
    cfg = compose([a for a in argv if not a.startswith(("hydra.", "resume="))])
    validate_config(cfg)
    assert cfg.trainer.limit_train_batches == 3 and cfg.data.path == "/data/a=b.txt"
    assert "pictures" not in cfg.callbacks and "tensorboard" not in cfg.logger


def test_a_replayed_value_is_validated_like_a_command_line_value(run_cli, tmp_path):
    run_dir = _plant(tmp_path / "run", ["model.net.latent_dim=-3"], tmp_path / "marker")
    code, err = run_cli(f"resume={run_dir}")
    assert code == 2 and err == "error: model.net.latent_dim=-3: must be an integer >= 1", err


def test_expand_resume_alone_refuses_what_is_never_data(tmp_path):
    """Without the schema check (the Python API), the rules that need no config still hold."""
    run_dir = _plant(tmp_path / "run", ["+callbacks.x._target_=builtins.open"],
                     tmp_path / "marker")
    with pytest.raises(ReplayError, match="_target_ key"):
        expand_resume([f"resume={run_dir}"])

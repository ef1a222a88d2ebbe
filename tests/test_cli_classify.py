"""`scratchllm classify` and friends on the command line: training, asking,
bad input as one clear line with exit status 2, help on every verb."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import scratchllm as sl
from scratchllm.cli import main


def run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "classifier"
    assert main(["classify", "train", "--out", str(out)]) == 0
    return out


def test_train_prints_epochs_and_saves(tmp_path, capsys):
    code, out, err = run(capsys, ["classify", "train", "--out", str(tmp_path / "c"), "--seed", "2"])
    assert code == 0
    assert re.search(r"^epoch\s+1 .*val accuracy", out, re.M)
    best = re.search(r"^best epoch (\d+): val loss (\d+\.\d+), val accuracy (\d+\.\d)%", out, re.M)
    assert best and float(best[3]) >= 95.0
    assert (tmp_path / "c" / "config.json").is_file() and (tmp_path / "c" / "model.safetensors").is_file()


@pytest.mark.parametrize("prefix", [[], ["predict"]])
def test_classify_prints_the_answer_and_both_scores(trained_dir, capsys, prefix):
    code, out, err = run(capsys, ["classify", *prefix, "32", "107", "56", "11.2", "--weights", str(trained_dir)])
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "leaf"
    printed = {m[1]: float(m[2]) for m in re.finditer(r"^  (leaf|flower)\s+score\s+([+-]\d+\.\d+)", out, re.M)}
    scores = sl.load(trained_dir)([[32, 107, 56, 11.2]]).data[0]
    assert printed["leaf"] == pytest.approx(scores[0], abs=6e-5)
    assert printed["flower"] == pytest.approx(scores[1], abs=6e-5)
    assert printed["leaf"] > printed["flower"]


def test_options_may_come_first(trained_dir, capsys):
    code, out, _ = run(capsys, ["classify", "--weights", str(trained_dir), "241", "200", "4", "59.5"])
    assert code == 0 and out.splitlines()[0] == "flower"


BAD = [
    (["classify", "32", "107", "56"], "give 4 numbers"),
    (["classify", "32", "107", "56", "11.2", "9"], "give 4 numbers"),
    (["classify", "32", "green", "56", "11.2"], "G must be a number, got 'green'"),
    (["classify", "trian"], "did you mean `classify train`"),
    (["classify", "-3", "107", "56", "11.2"], "R is a colour channel from 0 to 255, got -3"),
    (["classify", "32", "107", "56", "-1.5"], "VOLUME"),
    (["classify", "32", "107", "56", "nan"], "finite"),
    (["classify", "train", "--epochs", "ten"], "--epochs must be an integer"),
    (["explain", "classifier", "1", "2"], "give 4 numbers"),
    (["explain", "classifier", "a", "2", "3", "4"], "R must be a number"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_clear_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, argv)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert message in err


@pytest.mark.parametrize("verb", ["classify", "explain classifier"])
def test_missing_weights_is_one_clear_line(verb, tmp_path, capsys):
    code, out, err = run(capsys, [*verb.split(), "32", "107", "56", "11.2", "--weights", str(tmp_path / "nope")])
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and str(tmp_path / "nope") in err


def test_weights_of_another_model_kind(tmp_path, capsys):
    from scratchllm.models import CharMLP

    sl.save(CharMLP(vocab_size=5, context=2), tmp_path / "cm")
    code, _, err = run(capsys, ["classify", "1", "2", "3", "4", "--weights", str(tmp_path / "cm")])
    assert code == 2 and "not a classifier" in err


def test_without_saved_weights_a_model_is_trained_and_announced(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, ["classify", "241", "200", "4", "59.5"])
    assert code == 0 and out.splitlines()[0] == "flower"
    assert "trained now from seed 0" in err


def test_subprocess_bad_input_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-m", "scratchllm", "classify", "32", "107", "leafy", "11.2"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip() == "scratchllm classify: error: B must be a number, got 'leafy'"


HELP = ["classify", "classify train", "classify predict", "explain", "explain classifier", "explain charmlp",
        "charmlp", "charmlp train", "charmlp generate"]


@pytest.mark.parametrize("verb", HELP)
def test_help_on_every_verb(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*verb.split(), "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: scratchllm {verb}")


def test_scores_are_the_models_for_many_inputs(trained_dir, capsys):
    """Across random inputs, the printed verdict is the larger of the model's two scores."""
    model = sl.load(trained_dir)
    rng = np.random.default_rng(0)
    for _ in range(5):
        values = [*rng.integers(0, 256, 3).tolist(), round(float(rng.uniform(1, 120)), 1)]
        code, out, _ = run(capsys, ["classify", *map(str, values), "--weights", str(trained_dir)])
        assert code == 0
        assert out.splitlines()[0] == ("leaf", "flower")[int(model([values]).data[0].argmax())]

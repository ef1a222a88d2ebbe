"""What a first walk meets: output piped into `head` ends quietly; `train --help` words every option;
translate-train says how long it will take and how to shorten it; `plot` draws the classifier's and the
CharMLP's curves."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import scratchllm as sl
from scratchllm import translation_train as TT
from scratchllm.cli import main
from scratchllm.train import TrainConfig

from test_translation_train import tiny_config as translation_config

ENV = dict(os.environ, PYTHONPATH=str(Path(sl.__file__).parents[1]))


@pytest.mark.parametrize("argv", [["explain", "positions", "--positions", "4000", "--dims", "16"],
                                  ["train", "--help"]])
def test_piping_into_head_ends_quietly(argv):
    cmd = " ".join([sys.executable, "-m", "scratchllm", *argv]) + " | head -n 1"
    proc = subprocess.run(["bash", "-c", "set -o pipefail; " + cmd], capture_output=True, text=True, env=ENV,
                          timeout=120)
    assert proc.stdout.count("\n") == 1
    assert proc.stderr == ""  # no "Broken pipe", no traceback
    # and the output really was larger than what head took (the pipe did break)
    full = subprocess.run([sys.executable, "-m", "scratchllm", *argv], capture_output=True, text=True, env=ENV,
                          timeout=120)
    assert len(full.stdout) > (100_000 if argv[0] == "explain" else 1000)


def test_train_help_words_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    # no option is explained by its own name ("--n-head N_HEAD n head")
    for name in [f for f in TrainConfig.__dataclass_fields__ if f not in ("progress", "bias", "val_frac")]:
        flag = "--" + name.replace("_", "-")
        m = re.search(re.escape(flag) + r" \S+ (.*?)(?= --|$)", out)
        assert m, flag
        assert not m[1].startswith(name.replace("_", " ") + " (default"), f"{flag}: {m[1][:60]}"
    assert "'learned'" in out and "'sinusoidal'" in out and "'char'" in out and "'unigram'" in out


def test_translate_train_estimates_its_length(tmp_path):
    lines = []
    TT.train_translation(translation_config(tmp_path, epochs=3, bleu_sentences=0), echo=lines.append)
    estimate = [s for s in lines if s.startswith("plan:")]
    assert len(estimate) == 1, lines
    assert re.search(r"[0-9.]+ s a step on this machine; [0-9,]+ steps to go: about \d", estimate[0])
    assert "--minutes" in estimate[0] and "--d-model" in estimate[0]
    assert TT.TranslationConfig().threads == TrainConfig().threads


def test_plot_draws_the_classifier_and_the_charmlp(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["classify", "train", "--out", str(tmp_path / "clf"), "--epochs", "5", "--examples", "200"]) == 0
    assert main(["charmlp", "train", "--out", str(tmp_path / "cm"), "--steps", "20", "--max-chars", "5000",
                 "--no-progress"]) == 0
    capsys.readouterr()
    for run, n in (("clf", 5), ("cm", 10)):
        records = [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        assert len(records) == n and all(r["val_loss"] > 0 for r in records)
        assert main(["plot", str(tmp_path / run)]) == 0
        png = (tmp_path / run / "loss.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # a folder with no log: one line saying what plot can draw
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "charmlp train" in err and "classify train" in err

"""What the README promises about the loss curves of `scratchllm train`.

README: "`loss.png` is drawn only where matplotlib is installed ...; without
it, the last lines of `scratchllm train` say that the curves are in
`log.jsonl` and that `scratchllm plot` draws them once matplotlib is there."
"""
import json
import re
from pathlib import Path

import pytest

from scratchllm.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"

try:
    import matplotlib  # noqa: F401  (the plot extra)
except ImportError:
    matplotlib = None


def tiny_run(tmp_path, capsys):
    (tmp_path / "text.txt").write_text("the cats sat on the mat. a dog ran after the cats.\n" * 40)
    out_dir = tmp_path / "run"
    code = main(["train", "--data", str(tmp_path / "text.txt"), "--out", str(out_dir), "--max-iters", "2",
                 "--eval-interval", "1", "--eval-iters", "1", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
                 "--block-size", "8", "--batch-size", "2", "--sample-tokens", "0", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    return out_dir, out


def test_the_readme_says_what_loss_png_needs():
    text = " ".join(README.read_text().split())
    assert "`loss.png` is drawn only where matplotlib is installed" in text
    assert "the curves are in `log.jsonl` and that `scratchllm plot` draws them" in text


def test_the_end_of_train_says_where_the_curves_are(tmp_path, capsys):
    run, out = tiny_run(tmp_path, capsys)
    last = out.strip().splitlines()[-1]
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2] and all("val_loss" in r for r in records)
    if matplotlib is None:
        assert not (run / "loss.png").exists()
        assert re.fullmatch(rf"loss curves: {re.escape(str(run / 'log.jsonl'))}, one line per evaluation; "
                            rf"for {re.escape(str(run / 'loss.png'))}: pip install matplotlib \(the plot extra\), "
                            rf"then scratchllm plot {re.escape(str(run))}", last), last
    else:
        assert last == f"loss curves: {run / 'loss.png'}"
        assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.meant_skip
@pytest.mark.skipif(matplotlib is not None, reason="matplotlib is installed: the PNG is drawn")
def test_plot_without_matplotlib_is_one_line(tmp_path, capsys):
    run, _ = tiny_run(tmp_path, capsys)
    assert main(["plot", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install matplotlib" in err


def _curve_pixels(png_path, rgb):
    """(row, column) of the pixels of one line colour in a PNG, decoded by Pillow."""
    Image = pytest.importorskip("PIL.Image")
    np = pytest.importorskip("numpy")
    with Image.open(png_path) as im:
        assert im.format == "PNG"
        pixels = np.asarray(im.convert("RGB"), dtype=int)
    return pixels.shape, np.argwhere(np.abs(pixels - np.array(rgb)).sum(-1) < 30)


TRAIN_BLUE, VAL_ORANGE = (31, 119, 180), (255, 127, 14)  # matplotlib's first two line colours


def test_train_draws_loss_png_with_both_curves(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run, out = tiny_run(tmp_path, capsys)
    png = run / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for colour in (TRAIN_BLUE, VAL_ORANGE):
        shape, where = _curve_pixels(png, colour)
        assert shape == (440, 770, 3)  # 7 x 4 inches at 110 dpi
        # a line across the plot (steps 0 to 2), not only its legend entry
        assert len(where) > 50 and where[:, 1].max() - where[:, 1].min() > 400, f"no {colour} curve in {png}"


def test_loss_png_draws_the_logged_values(tmp_path):
    """A falling train curve and a rising validation curve: in the picture the blue line ends
    lower than it starts and the orange one higher (rows count downwards)."""
    pytest.importorskip("matplotlib")
    records = [{"step": s, "train_loss": 5.0 - s, "val_loss": 1.0 + s} for s in range(5)]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["plot", str(tmp_path)]) == 0
    for colour, falls in ((TRAIN_BLUE, True), (VAL_ORANGE, False)):
        _, where = _curve_pixels(tmp_path / "loss.png", colour)
        rows, cols = where[:, 0], where[:, 1]
        left, right = rows[cols <= cols.min() + 3].mean(), rows[cols >= cols.max() - 3].mean()
        assert (right > left + 100) if falls else (left > right + 100), (colour, left, right)

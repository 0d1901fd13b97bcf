"""The README's five-minute walk-through runs as written, every cell in order (two epochs instead of thirty)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_walkthrough_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    section = text[text.index("## Five-minute walk-through"):]
    section = section[:section.index("\n## ", 10)]
    code = "\n".join(re.findall(r"```python\n(.*?)```", section, re.S))
    assert "EPOCHS, SIZE = 30, (128, 192)" in code
    code = code.replace("EPOCHS, SIZE = 30, (128, 192)", "EPOCHS, SIZE = 2, (64, 96)")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md walk-through", "exec"), {"__name__": "walkthrough"})
    out = capsys.readouterr().out
    assert "6,628,945 trainable parameters" in out
    # a newcomer's short run gives a model that finds heads (fit recomputes its BatchNorm statistics)
    assert float(re.search(r"test Dice (\d\.\d+)", out).group(1)) > 0.6, out
    median = float(re.search(r"HC error on 35 test scans: median (\d+\.\d) mm", out).group(1))
    assert median < 30, out
    assert (tmp_path / "predictions.png").stat().st_size > 10_000
    assert (tmp_path / "runs" / "walkthrough" / "history.csv").is_file()
    assert (tmp_path / "fetal_head_savedmodel" / "saved_model.pb").is_file()

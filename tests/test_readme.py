"""The README's Python example runs as written (on the tiny embedded model and a text file made here)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "the README has one Python example"
    monkeypatch.chdir(tmp_path)
    story = "The little fox found a red ball in the garden. She rolled it to her friend the owl, who laughed. "
    (tmp_path / "my_stories.txt").write_text("\n".join(f"{story} Day {i}." for i in range(300)))
    exec(compile(blocks[0], "README.md", "exec"), {})
    printed = capsys.readouterr().out
    n_nodes = int(printed.split()[0])
    assert n_nodes > 0 and "communities" in printed
    assert (tmp_path / "my_crosscoder" / "cfg.json").is_file()
    html = (tmp_path / "my_graph.html").read_text()
    assert "fox" in html or "owl" in html  # the page's contexts come from this text

"""The README's API section runs as written (every ```python block, in order, one namespace)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def api_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## API in brief", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_api_section_runs(tmp_path, monkeypatch, capsys):
    blocks = api_blocks()
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)  # the example writes runs/readme/
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert (tmp_path / "runs" / "readme" / "records.jsonl").exists()
    assert namespace["result"].status == "complete"
    assert "complete" in capsys.readouterr().out

"""The README's Python API example runs as written."""
from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO


def test_python_api_example_runs(tmp_path):
    text = (REPO / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace("/tmp/bp", str(tmp_path / "out"))
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0].endswith(" ms") and "|" in lines[0]  # arch text, resolution, latency
    assert lines[-1].endswith("archs on the front") and int(lines[-1].split()[0]) > 0

"""The documentation site builds without warnings (``mkdocs build --strict``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _missing_pages() -> list[str]:
    import yaml

    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    pages = [p for entry in nav for p in entry.values() if isinstance(p, str) and p.endswith(".md")]
    return [p for p in pages if not (REPO / "docs" / p).is_file()]


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    missing = _missing_pages()
    if missing:
        pytest.skip(f"pages of other layers not written yet: {', '.join(missing)}")
    exe = Path(sys.executable).parent / "mkdocs"
    cmd = [str(exe)] if exe.is_file() else [shutil.which("mkdocs") or "mkdocs"]
    res = subprocess.run(
        [
            *cmd,
            "build",
            "--strict",
            "--site-dir",
            str(tmp_path / "site"),
            "--config-file",
            str(REPO / "mkdocs.yml"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    html = (tmp_path / "site" / "workflows" / "index.html").read_text()
    assert "forecast.perturbation.alpha" in html and "The HENS layout and what it costs" in html
    assert (tmp_path / "site" / "api" / "index.html").is_file()

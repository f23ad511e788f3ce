"""The documentation site builds cleanly, and every runnable script is documented."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _docs_text() -> str:
    return "\n".join(p.read_text() for p in (ROOT / "docs").rglob("*.md")) + (ROOT / "README.md").read_text()


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    # --strict turns every warning (broken link, missing nav page, bad docstring ref) into a failure
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file()


@pytest.mark.parametrize("folder", ["case_studies", "benchmarks"])
def test_every_script_is_referenced_from_the_docs(folder):
    text = _docs_text()
    missing = [p.name for p in sorted((ROOT / folder).glob("*.py")) if f"{folder}/{p.name}" not in text]
    assert not missing, f"{folder} scripts not mentioned in docs/ or README.md: {missing}"

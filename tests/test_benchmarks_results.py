"""benchmarks/results.py: a benchmark rewrites its own section of RESULTS.md and nothing else."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "results.py"


@pytest.fixture(scope="module")
def results():
    spec = importlib.util.spec_from_file_location("benchmark_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


OLD = """# partita benchmarks

Intro line.

## First (benchmarks/first.py)

first body
```
## not a heading: inside a code block
```

### a subsection of First

old numbers

## Second (benchmarks/second.py)

second body, kept

## Third

third body, kept
"""


def test_replaces_one_section_and_keeps_the_others(results, tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(OLD)
    results.write_section("First (benchmarks/first.py)", command="python benchmarks/first.py",
                          body="| a | b |\n| --- | --- |\n| 1 | 2 |\n", peer="peer 3.0 files/s", path=path)
    text = path.read_text()
    assert text.startswith("# partita benchmarks\n\nIntro line.\n\n## First (benchmarks/first.py)\n")
    first = text[text.index("## First"):text.index("## Second")]
    assert "- command: `python benchmarks/first.py`" in first
    assert "- peer: peer 3.0 files/s" in first
    assert "| 1 | 2 |" in first
    assert "- machine: " in first and " cores, " in first
    assert "UTC" in first.split("- date: ")[1].splitlines()[0]
    for gone in ("first body", "not a heading", "a subsection of First", "old numbers"):
        assert gone not in text
    assert text.endswith("## Second (benchmarks/second.py)\n\nsecond body, kept\n\n## Third\n\nthird body, kept\n")
    assert text.count("## First") == 1


def test_replacing_the_last_section_and_adding_a_new_one(results, tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(OLD)
    results.write_section("Third", command="c3", body="new third", peer="p3", path=path)
    results.write_section("Fourth", command="c4", body="new fourth", peer="p4", path=path)
    text = path.read_text()
    assert "third body" not in text and "new third" in text
    assert text.index("## Third") < text.index("## Fourth")
    assert text.rstrip().endswith("new fourth")
    assert OLD[:OLD.index("## Third")] == text[:text.index("## Third")]  # everything before untouched
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write leaves no temporary file


def test_a_missing_file_gets_the_header(results, tmp_path):
    path = tmp_path / "RESULTS.md"
    results.write_section("Only", command="c", body="b", peer="p", path=path)
    text = path.read_text()
    assert text.startswith(results.HEADER) and "## Only\n" in text

"""Write one benchmark's section of benchmarks/RESULTS.md, leaving the other sections as they are.

Every benchmark script ends with one call::

    from results import write_section      # scripts run as ``python benchmarks/X.py``
    write_section("Prepare + pianoroll (benchmarks/prepare.py)",
                  command="python benchmarks/prepare.py",
                  body=markdown_table_and_notes,
                  peer="pretty_midi 5.9 files/s; partita 2 workers 52x pretty_midi")

The section ``## {title}`` is replaced whole (from its heading to the next ``## `` heading outside
a code block), or added at the end when the file has none. It starts with the command, the machine
(CPU model and its bf16 matrix instructions, core count, GPU when torch sees one), the date (UTC)
and the peer's figure, so a reader sees what was run where and against what before the numbers.
The file is written atomically.
"""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = (
    "# partita benchmarks\n\n"
    "Current results only, one section per benchmark script, each written by its script"
    " (`benchmarks/results.py`); the history is in git. Speed is a ratio against a peer measured"
    " in the same run on the same machine.\n"
)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux) and the bf16 matrix instructions it has."""
    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    extras = [label for flag, label in (("amx_tile", "AMX"), ("avx512_bf16", "AVX-512 bf16")) if flag in flags]
    return f"{name} ({', '.join(extras)})" if extras else name


def gpu_name() -> str | None:
    """The first CUDA device's name when torch is installed and sees one, else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine() -> str:
    """One line: CPU model, core count, GPU (or "no GPU"), operating system."""
    gpu = gpu_name()
    return (f"{cpu_model()}, {os.cpu_count()} cores, {gpu or 'no GPU'}; "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def section_text(title: str, command: str, body: str, peer: str, *, machine_line: str, date: str) -> str:
    """The markdown of one section, heading included, ending with one newline."""
    return (f"## {title}\n\n"
            f"- command: `{command}`\n"
            f"- machine: {machine_line}\n"
            f"- date: {date}\n"
            f"- peer: {peer}\n\n"
            f"{body.strip()}\n")


def replace_section(text: str, title: str, section: str) -> str:
    """``text`` with the section headed ``## {title}`` replaced by ``section`` (added when absent)."""
    lines = text.splitlines(keepends=True)
    heading = f"## {title}"
    start = end = None
    fenced = False
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or not line.startswith("## "):
            continue
        if start is None and line.rstrip() == heading:
            start = i
        elif start is not None:
            end = i
            break
    if start is None:
        return text.rstrip("\n") + "\n\n" + section
    rest = "".join(lines[end:]) if end is not None else ""
    return "".join(lines[:start]) + section + ("\n" + rest if rest else "")


def write_section(title: str, command: str, body: str, peer: str, *, path: Path | str = RESULTS) -> None:
    """Write or replace the section ``## {title}`` of RESULTS.md; the other sections stay as they are.

    ``command``: what to run to get these numbers again; ``body``: the results (markdown);
    ``peer``: one line with the figure of the tool a user would pick instead, measured in the same run.
    """
    from partita.io.files import atomic_write

    path = Path(path)
    old = path.read_text() if path.exists() else HEADER
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = section_text(title, command, body, peer, machine_line=machine(), date=date)
    atomic_write(path, replace_section(old, title, section))

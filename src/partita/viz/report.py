"""A report a person reads: one static HTML page over files in the same folder.

A ``Report`` collects sections (text, tables, pictures, audio players, MIDI links, an embedded
page such as the interactive map) and writes ``index.html`` with every link relative, so the
folder can be zipped, copied or served as it is and works offline (no script or font is fetched).

::

    report = Report("partita demo", out_dir)
    section = report.section("Attribution", "Held-out pieces, attributed by the shipped embedder.")
    section.table(["piece", "true", "predicted"], rows)
    section.item("bach-continuation", image="rolls/bach.png", audio="audio/bach.wav", midi="generated/bach.mid")
    report.write()
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from partita.io.files import atomic_write

__all__ = ["Report", "Section"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
p.note { color: #555; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.items { display: grid; grid-template-columns: repeat(auto-fill, minmax(22rem, 1fr)); gap: 1rem; }
.item { border: 1px solid #e3e3e3; border-radius: 6px; padding: 0.6rem; }
.item img { width: 100%; height: auto; display: block; }
.item audio { width: 100%; margin-top: 0.4rem; }
.item .caption { font-size: 0.9rem; margin: 0.3rem 0; }
iframe { width: 100%; height: 42rem; border: 1px solid #ddd; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _href(path: Path | str, root: Path) -> str:
    """A link relative to the report folder, with URL escaping of each part."""
    from urllib.parse import quote

    rel = os.path.relpath(Path(path).resolve(), root.resolve())
    return quote(Path(rel).as_posix())


class _Item(str):
    """The HTML of one music item (laid out in a grid with its neighbours)."""


@dataclass
class Section:
    title: str
    intro: str = ""
    root: Path = Path(".")
    parts: list[str] = field(default_factory=list)

    def text(self, text: str) -> "Section":
        self.parts.append(f"<p>{_e(text)}</p>")
        return self

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> "Section":
        """A table; numbers are right-aligned, floats shown with 3 significant decimals."""
        head = "".join(f"<th>{_e(c)}</th>" for c in columns)
        body = []
        for row in rows:
            cells = []
            for value in row:
                if isinstance(value, float):
                    cells.append(f'<td class="num">{value:.3g}</td>')
                elif isinstance(value, int) and not isinstance(value, bool):
                    cells.append(f'<td class="num">{value}</td>')
                else:
                    cells.append(f"<td>{_e(value)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
        return self

    def item(
        self,
        caption: str,
        *,
        image: Optional[Path | str] = None,
        audio: Optional[Path | str] = None,
        midi: Optional[Path | str] = None,
    ) -> "Section":
        """One piece of music: its pianoroll picture, an audio player and a MIDI download link."""
        out = [f'<div class="item"><div class="caption">{_e(caption)}</div>']
        if image is not None:
            out.append(f'<img src="{_href(image, self.root)}" alt="{_e(caption)} pianoroll">')
        if audio is not None:
            out.append(f'<audio controls preload="none" src="{_href(audio, self.root)}"></audio>')
        if midi is not None:
            out.append(f'<div><a href="{_href(midi, self.root)}" download>MIDI</a></div>')
        out.append("</div>")
        self.parts.append(_Item("".join(out)))
        return self

    def image(self, path: Path | str, alt: str) -> "Section":
        self.parts.append(f'<p><img src="{_href(path, self.root)}" alt="{_e(alt)}" style="max-width:100%"></p>')
        return self

    def page(self, path: Path | str, title: str) -> "Section":
        """Embed another page of the folder (the interactive map) and link to it."""
        href = _href(path, self.root)
        self.parts.append(f'<iframe src="{href}" title="{_e(title)}"></iframe><p><a href="{href}">{_e(title)}</a></p>')
        return self

    def link(self, path: Path | str, text: str) -> "Section":
        self.parts.append(f'<p><a href="{_href(path, self.root)}">{_e(text)}</a></p>')
        return self

    def render(self) -> str:
        intro = f'<p class="note">{_e(self.intro)}</p>' if self.intro else ""
        body, grid = [], []
        for part in self.parts + [""]:  # consecutive items share one grid
            if isinstance(part, _Item):
                grid.append(part)
                continue
            if grid:
                body.append('<div class="items">' + "".join(grid) + "</div>")
                grid = []
            body.append(part)
        return f"<section><h2>{_e(self.title)}</h2>{intro}{''.join(body)}</section>"


class Report:
    """An HTML report in ``out_dir``; files it shows must live inside that folder."""

    def __init__(self, title: str, out_dir: Path | str, subtitle: str = ""):
        self.title = title
        self.subtitle = subtitle
        self.root = Path(out_dir)
        self.sections: list[Section] = []

    def section(self, title: str, intro: str = "") -> Section:
        s = Section(title, intro, self.root)
        self.sections.append(s)
        return s

    def write(self, name: str = "index.html") -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        sub = f'<p class="note">{_e(self.subtitle)}</p>' if self.subtitle else ""
        page = (
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_e(self.title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{_e(self.title)}</h1>{sub}"
            + "".join(s.render() for s in self.sections)
            + "</body></html>\n"
        )
        return atomic_write(self.root / name, page)

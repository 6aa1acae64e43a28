"""mkdocs hook: pages that other parts of the project add to docs/ join the nav when they exist.

The nav in mkdocs.yml names only pages that are always there. A page named in OPTIONAL_PAGES is
placed after its anchor page once its file exists; any other page of docs/ that the nav does not
name is listed under "More" (titled by its first heading), so the site builds strictly, with
every page reachable, before and after a page arrives.
"""

from pathlib import Path

# file -> (nav title, the page it follows)
OPTIONAL_PAGES = {
    "editing.md": ("Editing your file: continue, infill, reconstruct", "infill.md"),
    "attribution.md": ("Attribution manual", "embed.md"),
    "serve.md": ("Web explorer manual", "explorer.md"),
    "training.md": ("Training manual", "train.md"),
}


def _insert_after(items: list, anchor: str, entry: dict) -> bool:
    for i, item in enumerate(items):
        if isinstance(item, dict):
            (value,) = item.values()
            if value == anchor:
                items.insert(i + 1, entry)
                return True
            if isinstance(value, list) and _insert_after(value, anchor, entry):
                return True
    return False


def _named(items: list) -> set[str]:
    names = set()
    for item in items:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        names |= _named(value) if isinstance(value, list) else {value}
    return names


def on_config(config, **kwargs):
    docs = Path(config["docs_dir"])
    nav = config["nav"]
    for name, (title, anchor) in OPTIONAL_PAGES.items():
        if (docs / name).is_file() and not _insert_after(nav, anchor, {title: name}):
            nav.append({title: name})
    named = _named(nav)
    more = sorted(p.relative_to(docs).as_posix() for p in docs.rglob("*.md"))
    more = [page for page in more if page not in named]
    if more:
        nav.append({"More": more})
    return config

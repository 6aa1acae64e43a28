"""Bundles: a folder that holds one trained model, everything needed to use it, and its story.

::

    my-model/
      config.json        {"family": "gpt", "format": "partita.bundle", "format_version": 1,
                          "dtype": "float32", "config": {...the family's config fields...}}
      model.safetensors  the weights (float32, or float16 with save_bundle(..., fp16=True))
      tokenizer.json     the tokenizer, when the model reads tokens (partita.represent.tokens)
      card.json          what data, what command, what metrics (free-form JSON object)
      generation.json    optional: this model's sampling defaults (``SamplingConfig`` fields,
                         e.g. ``{"max_pause": 2.1}``), which the generation commands start from

Weights are read with ``safetensors`` only: loading a bundle never runs code from the files.
``load_bundle`` picks the model class from ``family`` through a small registry; a family lives
in its own module (imported only when one of its bundles is loaded) and can be added with
``register_family``. A model class of a family has ``family`` and ``config_class`` attributes, a
``config`` dataclass attribute with ``to_dict``/``from_dict``, and takes the config as its one
constructor argument.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from partita.errors import PartitaError, one_line
from partita.io.files import atomic_write

__all__ = ["Bundle", "BundleError", "FAMILIES", "load", "load_bundle", "register_family", "save_bundle"]

FORMAT = "partita.bundle"
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, CARD_FILE = "config.json", "model.safetensors", "tokenizer.json", "card.json"
GENERATION_FILE = "generation.json"

#: family name -> "module:ModelClass" (imported on demand) or the class itself.
FAMILIES: dict[str, Any] = {
    "gpt": "partita.models.gpt:GPT",
    "siavit": "partita.models.siavit:SiaViT",
    "featnet": "partita.models.featnet:FeatNet",
    "musicvae": "partita.models.musicvae:MusicVAE",
    "tvae": "partita.models.tvae:TVAE",
    "classifier": "partita.models.classifier:GRUClassifier",
    "harmony": "partita.models.harmony:ChoraleHarmony",
    "chords": "partita.models.chords:ChordTagger",
}

#: family name -> the command that trains one (said when a bundle of another family is passed).
TRAIN_COMMANDS = {
    "gpt": "partita train gpt", "siavit": "partita train embedder", "featnet": "partita train featnet",
    "musicvae": "partita train vae", "tvae": "partita train tvae", "classifier": "partita train classifier",
    "harmony": "partita train chorale", "chords": "partita train chords",
}

PathLike = Union[str, os.PathLike]


class BundleError(PartitaError):
    """A bundle that cannot be written or read; ``str(err)`` is one line."""


@dataclass
class Bundle:
    """A loaded bundle: ``model`` (in eval mode), its ``config``, ``tokenizer`` (or None), ``card``,
    and ``generation``: the sampling defaults of ``generation.json`` ({} without one)."""

    model: Any
    config: Any
    tokenizer: Any = None
    card: dict = field(default_factory=dict)
    family: str = ""
    path: Optional[Path] = None
    generation: dict = field(default_factory=dict)


def register_family(name: str, model_class: Any) -> None:
    """Let ``load_bundle`` read bundles of family ``name``: ``model_class`` is the class or a
    ``"module:Class"`` string (imported when such a bundle is loaded)."""
    FAMILIES[name] = model_class


def _model_class(family: str, where: Path) -> Any:
    entry = FAMILIES.get(family)
    if entry is None:
        raise BundleError(f"{where}: unknown model family {family!r} (known: {', '.join(sorted(FAMILIES))})")
    if isinstance(entry, str):
        module, _, name = entry.partition(":")
        entry = getattr(importlib.import_module(module), name)
        FAMILIES[family] = entry
    return entry


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def _state_for_saving(model: Any, fp16: bool) -> tuple[dict, dict[str, str]]:
    """Tensors to write (contiguous, on CPU, float16 when asked) and aliases of shared tensors
    (safetensors refuses two names for one storage; the alias is re-filled on load)."""
    import torch

    tensors: dict = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, t in model.state_dict().items():
        ptr = t.untyped_storage().data_ptr()
        key = (ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        t = t.detach()
        if t.numel() and ptr in storages:
            t = t.clone()  # a different view of a storage already written: save its own copy
        storages.add(ptr)
        if fp16 and t.is_floating_point():
            t = t.to(torch.float16)
        tensors[name] = t.to("cpu").contiguous()
    return tensors, aliases


def save_bundle(
    model: Any,
    path: PathLike,
    tokenizer: Any = None,
    card: Optional[dict] = None,
    *,
    fp16: bool = False,
    generation: Optional[dict] = None,
) -> Path:
    """Write ``model`` (and ``tokenizer``, ``card``) as a bundle folder ``path``; returns it.

    Existing bundle files in ``path`` are replaced file by file (each appears whole); a
    ``tokenizer.json`` left from an earlier save is removed when ``tokenizer`` is None.
    ``fp16=True`` stores floating-point weights as float16 (half the size; loading casts them
    back to the model's float32 unless ``load_bundle(dtype=...)`` says otherwise). ``card`` is
    any JSON-able dict; ``family``, ``parameters``, ``partita_version`` and ``saved`` (UTC time)
    are added unless present. ``generation``: sampling defaults written to ``generation.json``
    (None keeps the file an earlier save left).
    """
    from safetensors.torch import save as st_save

    from partita import __version__

    family = getattr(type(model), "family", None)
    config = getattr(model, "config", None)
    if not family or config is None or not hasattr(config, "to_dict"):
        raise BundleError(
            f"cannot save a {type(model).__name__}: a bundle needs a partita model (with .family and .config)"
        )
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BundleError(f"{path}: exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)

    tensors, aliases = _state_for_saving(model, fp16)
    meta = {"format": "pt", "family": family, "aliases": json.dumps(aliases)}
    atomic_write(path / WEIGHTS_FILE, st_save(tensors, metadata=meta))

    config_doc = {
        "family": family,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dtype": "float16" if fp16 else "float32",
        "config": config.to_dict(),
    }
    atomic_write(path / CONFIG_FILE, _json_bytes(config_doc))

    if tokenizer is not None:
        from partita.represent.tokens import save_tokenizer

        save_tokenizer(tokenizer, path / TOKENIZER_FILE)
    elif (path / TOKENIZER_FILE).exists():
        (path / TOKENIZER_FILE).unlink()

    card = dict(card or {})
    card.setdefault("family", family)
    if hasattr(model, "parameters"):
        card.setdefault("parameters", int(sum(p.numel() for p in model.parameters())))
    card.setdefault("partita_version", __version__)
    card.setdefault("saved", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    atomic_write(path / CARD_FILE, _json_bytes(card))
    if generation is not None:
        atomic_write(path / GENERATION_FILE, _json_bytes(dict(generation)))
    return path


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: cannot read the {what} ({type(e).__name__}: {e})") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: corrupt {what} ({e.msg} at line {e.lineno})") from None


def load_bundle(path: PathLike, *, device: Any = "cpu", dtype: Any = None) -> Bundle:
    """Read a bundle folder written by ``save_bundle``; the model comes back in eval mode.

    ``device``: where the model goes. ``dtype``: a torch floating dtype for the weights (default:
    the model's own, float32, also for an fp16 bundle). A missing or damaged bundle raises
    ``BundleError`` (a ``PartitaError``) with a one-line message.
    """
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle folder (save one with save_bundle or a train command)")
    if not (path / CONFIG_FILE).is_file():
        raise BundleError(f"{path}: not a partita bundle (no {CONFIG_FILE})")
    doc = _read_json(path / CONFIG_FILE, "bundle config")
    if not isinstance(doc, dict) or "family" not in doc or not isinstance(doc.get("config"), dict):
        raise BundleError(f"{path / CONFIG_FILE}: not a partita bundle config (needs 'family' and 'config')")
    if int(doc.get("format_version", 1)) > FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format {doc['format_version']} is newer than this partita: upgrade partita")
    family = str(doc["family"])
    cls = _model_class(family, path)
    try:
        config = cls.config_class.from_dict(doc["config"])
    except PartitaError as e:
        raise BundleError(f"{path / CONFIG_FILE}: {e}") from None
    except Exception as e:
        raise BundleError(f"{path / CONFIG_FILE}: invalid {family} config ({one_line(e)})") from None

    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise BundleError(f"{path}: the bundle has no {WEIGHTS_FILE}")
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {name: f.get_tensor(name) for name in f.keys()}
        aliases = json.loads(meta.get("aliases", "{}"))
        if not isinstance(aliases, dict):
            raise ValueError("bad 'aliases' metadata")
    except Exception as e:  # SafetensorError, OSError, bad header JSON...
        raise BundleError(f"{weights}: corrupt weights file ({one_line(e)})") from None
    for name, source in aliases.items():
        if source in state:
            state[name] = state[source]

    model = cls(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [s.strip() for s in str(e).splitlines() if s.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "")
        raise BundleError(f"{weights}: weights do not fit the {family} config ({detail[:300]})") from None
    if dtype is not None:
        model = model.to(dtype=dtype)
    model = model.to(device).eval()

    tokenizer = None
    if (path / TOKENIZER_FILE).is_file():
        from partita.represent.tokens import load_tokenizer

        try:
            tokenizer = load_tokenizer(path / TOKENIZER_FILE)
        except PartitaError as e:
            raise BundleError(str(e)) from None
    card = _read_json(path / CARD_FILE, "model card") if (path / CARD_FILE).is_file() else {}
    generation = _read_json(path / GENERATION_FILE, "generation defaults") if (path / GENERATION_FILE).is_file() else {}
    if not isinstance(generation, dict):
        raise BundleError(f"{path / GENERATION_FILE}: must be a JSON object of sampling options")
    return Bundle(model=model, config=config, tokenizer=tokenizer, card=card, family=family, path=path,
                  generation=generation)


def load(
    model: Any = None, family: Union[str, tuple, None] = None, *, default: Optional[str] = None,
    device: Any = "cpu", dtype: Any = None,
) -> Bundle:
    """The one loader: a ``Bundle`` from a shipped name (``"gpt-piano"``, see
    ``partita.pretrained``), a bundle folder, or a ``Bundle`` (returned as it is); None loads
    ``default`` (a shipped name).

    ``family``: the family (or a tuple of families) the bundle must have; another one is a
    ``BundleError`` naming the command that trains the right kind. A folder on disk wins over a
    shipped model of the same name.
    """
    if model is None:
        if default is None:
            raise BundleError("no model given (pass a bundle folder or a shipped model's name)")
        model = default
    if not isinstance(model, Bundle):
        if not isinstance(model, (str, os.PathLike)):
            raise BundleError(f"expected a bundle folder, a shipped model's name or a Bundle, got {type(model).__name__}")
        path = Path(model).expanduser()
        if not path.exists() and isinstance(model, str) and os.sep not in model and "/" not in model:
            from partita import pretrained

            path = pretrained.bundle_path(model)  # a shipped name, or one line listing the shipped ones
        model = load_bundle(path, device=device, dtype=dtype)
    wanted = (family,) if isinstance(family, str) else tuple(family or ())
    if wanted and model.family not in wanted:
        where = f"{model.path}: " if model.path is not None else ""
        kinds = " or ".join(wanted)
        how = " / ".join(TRAIN_COMMANDS[f] for f in wanted if f in TRAIN_COMMANDS)
        raise BundleError(f"{where}a {model.family} bundle, not a {kinds} one" + (f"; '{how}' makes one" if how else ""))
    return model

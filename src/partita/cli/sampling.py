"""The sampling options of the commands that generate, made from ``SamplingConfig``'s fields.

``@sampling_options`` adds one ``--option`` per field whose metadata names a ``cli`` flag, with
the field's own help text, to a command that takes ``sampling: dict``. An option left out is not
passed, so the model bundle's ``generation.json`` and then ``SamplingConfig``'s defaults apply;
the command receives only what the user said (``{"temperature": 0.9, "bars": 8}``). One list of
options, spelt once, for ``partita generate``, ``partita infill`` and the web explorer.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Optional

import typer

from partita.generation.sampling import SamplingConfig

__all__ = ["SAMPLING_CLI_FIELDS", "sampling_options"]

_TYPES = {"float": float, "int": int, "bool": bool, "Optional[int]": int, "Optional[float]": float, "Any": str,
          "Optional[bool]": bool}


def _cli_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(SamplingConfig) if f.metadata.get("cli")]


#: The ``SamplingConfig`` fields the command line offers.
SAMPLING_CLI_FIELDS = tuple(f.name for f in _cli_fields())


def _option(f: dataclasses.Field, default_text: Optional[str]) -> tuple[type, Any]:
    kind = _TYPES[str(f.type)]
    names = [f"--{f.metadata['cli']}"] + ([f.metadata["short"]] if f.metadata.get("short") else [])
    shown = default_text if default_text is not None else (None if f.default is None else str(f.default))
    help_text = f.metadata["help"] + (f" (default {shown})" if shown is not None else "")
    return Optional[kind], typer.Option(None, *names, help=help_text, show_default=False)


def sampling_options(*, exclude: tuple[str, ...] = (), defaults: Optional[dict[str, str]] = None) -> Callable:
    """Decorate a command ``fn(..., sampling: dict)`` with the sampling options (all but
    ``exclude``); ``defaults`` overrides the default shown in the help for some fields."""
    defaults = defaults or {}

    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        if "sampling" not in sig.parameters:
            raise TypeError(f"{fn.__name__} needs a 'sampling' parameter")
        fields = [f for f in _cli_fields() if f.name not in exclude]
        params = [p for name, p in sig.parameters.items() if name != "sampling"]
        annotations = {k: v for k, v in getattr(fn, "__annotations__", {}).items() if k != "sampling"}
        for f in fields:
            kind, option = _option(f, defaults.get(f.name))
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind))
            annotations[f.name] = kind

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            sampling = {f.name: kwargs.pop(f.name) for f in fields if kwargs.get(f.name) is not None}
            kwargs.pop("sampling", None)
            for f in fields:
                kwargs.pop(f.name, None)
            return fn(*args, sampling=sampling, **kwargs)

        command.__signature__ = sig.replace(parameters=params)
        command.__annotations__ = annotations
        return command

    return wrap

"""The base of every family's config dataclass: ``to_dict`` / ``from_dict`` for bundles."""

from __future__ import annotations

from dataclasses import asdict, fields, replace
from typing import Any, ClassVar

from partita.errors import PartitaError


class ModelConfig:
    """Mixed into a ``@dataclass`` config; ``kind`` names the family in messages, ``presets`` holds
    its named configurations (each family module fills it in below its ``PRESETS``)."""

    kind: ClassVar[str] = "model"
    presets: ClassVar[dict] = {}

    @classmethod
    def preset(cls, name: str, **overrides: Any):
        """A named configuration (``presets``) with some fields changed."""
        if name not in cls.presets:
            raise PartitaError(f"unknown {cls.kind} preset {name!r}: choose one of {', '.join(cls.presets)}")
        return replace(cls.presets[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """A config from ``to_dict`` output; unknown fields are an error (a newer partita's file)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PartitaError(f"unknown {cls.kind} config field(s) {', '.join(unknown)} (made by a newer partita?)")
        return cls(**d)

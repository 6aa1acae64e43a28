"""Model families: one file each, a Config dataclass on top and an ``nn.Module``.

A family's model class has a ``family`` name, a ``config_class`` and takes its config as the one
constructor argument; ``partita.bundle`` saves and loads any such model.
"""

from partita.models.gpt import GPT, PRESETS, GPTConfig

__all__ = ["GPT", "GPTConfig", "PRESETS"]

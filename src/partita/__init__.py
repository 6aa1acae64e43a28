"""partita: deep learning on symbolic music."""

__version__ = "0.1.0"

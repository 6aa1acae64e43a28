"""Training the accompaniment model: ``partita train gpt --accompany MELODY:PIANO --data FOLDER``.

The same transformer, module and run as ``partita train gpt`` (``GPTModule`` under ``run``);
only the batches differ: windows of bars with the given track first and the written one after
it (``partita.data.accompany``), read from a folder of multi-track MIDI files (POP909) and split
by song. The model starts from a bundle (``--init gpt-piano``: its tokenizer, config and
weights) or from a preset with a new REMI tokenizer; it conditions on no label ("no label"
token), and gains the fill-in-the-middle markers the layout uses when it lacks them.
"""

from __future__ import annotations

from pathlib import Path

from partita.data.accompany import AccompanyStream, parse_tracks
from partita.errors import PartitaError
from partita.generation.accompany import read_songs
from partita.models.gpt import GPT, GPTConfig
from partita.train.common import RunConfig, run, start_run
from partita.train.gpt import RUN_DEFAULTS, GPTModule, _load_initial

#: Validation windows (the same ones at every validation).
VAL_WINDOWS = 96


class AccompanyModule(GPTModule):
    """``GPTModule`` fed accompaniment windows instead of song streams."""

    songs: dict = {}

    def _stream(self, split: str, *, loop: bool) -> AccompanyStream:
        songs = self.songs.get(split) or []
        if not songs:
            raise PartitaError(f"no {split} songs with both tracks")
        return AccompanyStream(songs, batch_size=self.run_config.batch_size, seq_len=self.seq_len,
                               label_id=self.model.label_token(None), pad_id=self.model.label_token(None),
                               fill_tokens=(self.model.fill_token("suffix"), self.model.fill_token("middle")),
                               seed=self.run_config.seed, loop=loop, max_windows=None if loop else VAL_WINDOWS)


def train_accompany(folder: str | Path, out: str | Path, run_config: RunConfig | None = None, *, tracks: str = "MELODY:PIANO",
                    init: str | Path | None = None, preset: str | None = None, overrides: dict | None = None,
                    seq_len: int | None = None, command: str | None = None, callbacks: list | None = None,
                    **run_options) -> dict:
    """Train (or fine-tune from ``init``) a GPT to write track ``WRITTEN`` under ``GIVEN``
    (``tracks="GIVEN:WRITTEN"``) on the MIDI files of ``folder``; returns the card."""
    from partita.bundle import load, save_bundle
    from partita.represent.tokens import make_tokenizer

    pair = parse_tracks(tracks)
    config_run, out = start_run(out, run_config, run_options, RUN_DEFAULTS)
    start = load(str(init), "gpt") if init is not None else None
    if start is not None:
        tokenizer = start.tokenizer
        config = GPTConfig.from_dict({**start.model.config.to_dict(), "fim": True})
    else:
        tokenizer = make_tokenizer()
        config = GPTConfig.preset(preset or "small", **{"vocab_size": len(tokenizer), "n_labels": 0, "fim": True,
                                                        "bar_embeddings": True, **(overrides or {})})
    songs, skipped = read_songs(folder, tokenizer, pair)
    if not songs["train"] or not songs["valid"]:
        raise PartitaError(f"{folder}: no songs with tracks {pair[0]} and {pair[1]} in the train or valid split "
                           f"({len(skipped)} files skipped)")

    def make_module(r: RunConfig) -> AccompanyModule:
        module = AccompanyModule(config.to_dict(), r, seq_len=seq_len)
        module.songs = songs
        if start is not None and not r.resume:
            _load_initial(module.model, start.model)
        return module

    def export(module: AccompanyModule, card: dict) -> None:
        card["tokens_seen"] = int(module.tokens_seen)
        save_bundle(module.model.cpu().float(), out / "bundle", tokenizer=tokenizer, card=card,
                    fp16=config_run.fp16_bundle)

    card = {
        "family": "gpt",
        "task": "accompany",
        "tracks": {"given": pair[0], "written": pair[1]},
        "corpus": str(Path(folder).expanduser()),
        "labels": [],  # conditions on no label: an init's composer labels are not the model's
        "command": command or "partita.train.accompany.train_accompany(...)",
        "init": None if start is None else str(start.path),
        "preset": None if start is not None else (preset or "small"),
        "split": "by song number: test = numbers ending in 9, valid = 4 mod 20, train = the rest "
                 f"({len(songs['train'])} train, {len(songs['valid'])} valid songs; {len(skipped)} files skipped)",
        "parameters": GPT(config).num_parameters(),
        "notes": "val/loss is on accompaniment tokens of validation windows; 'partita eval accompany' measures the test songs",
    }
    settings = {"tracks": tracks, "init": card["init"], "seq_len": seq_len, "model": config.to_dict()}
    return run(make_module, config_run, out, card=card, export=export, callbacks=callbacks, cpu_bf16=True,
               settings=settings)

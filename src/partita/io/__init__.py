"""MIDI in and out: loading with one-line errors, note arrays, and preprocessing options."""

from partita.io.midi import (
    DEFAULT_MAX_BYTES,
    NOTE_DTYPE,
    MidiError,
    drop_drums,
    duration_seconds,
    is_piano,
    load,
    merge_tracks,
    note_array,
    pitched,
    preprocess,
    save,
    sustain_pedal,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "NOTE_DTYPE",
    "MidiError",
    "drop_drums",
    "duration_seconds",
    "is_piano",
    "load",
    "merge_tracks",
    "note_array",
    "pitched",
    "preprocess",
    "save",
    "sustain_pedal",
]

"""``partita data``: prepare, merge and inspect corpora; train tokenizers; write token streams."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from partita.cli.common import console, err_console, print_corpus_summary, progress_bar, write_json
from partita.errors import PartitaError

app = typer.Typer(help="Prepare corpora of MIDI files and their token streams.", no_args_is_help=True)
tokenizer_app = typer.Typer(help="Train tokenizers on a prepared corpus.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")


@app.command("prepare")
def prepare_cmd(
    source: str = typer.Argument(..., help="A folder of MIDI files, or the word 'bundled' for the music21 corpus."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the prepared corpus."),
    format: Optional[str] = typer.Option(None, "--format", help="folder, giantmidi, maestro, asap, lakh or bundled (default: detected)."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Worker processes (default: all cores)."),
    shard: str = typer.Option("1/1", "--shard", help="Prepare only shard I of N (1-based), e.g. 3/8 on the 3rd of 8 machines."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/valid/test split."),
    valid: float = typer.Option(0.1, "--valid", help="Fraction of works for validation."),
    test: float = typer.Option(0.1, "--test", help="Fraction of works for test."),
    split_mode: str = typer.Option("pieces", "--split-mode", help="'pieces', or 'labels' to hold out whole labels as 'unseen'."),
    unseen: float = typer.Option(0.2, "--unseen", help="With --split-mode labels: fraction of labels held out."),
    labels_csv: Optional[Path] = typer.Option(None, "--labels-csv", help="A path,label[,title] CSV for a plain folder."),
    labels_from: str = typer.Option(
        "auto", "--labels-from",
        help="Plain folder labels: folder (first sub-folder), parent (the file's folder), none, csv, or auto (csv if any; none when each sub-folder holds one piece, as in POP909; else folder).",
    ),
    labels: Optional[str] = typer.Option(None, "--labels", help="Keep only these labels, comma-separated (e.g. Bach,Mozart)."),
    min_pieces: int = typer.Option(0, "--min-pieces", help="Leave out labels with fewer usable pieces than this."),
    composite: str = typer.Option("keep", "--composite", help="MAESTRO 'A / B' composers: keep as one label or drop."),
    max_per_label: Optional[int] = typer.Option(None, "--max-per-label", help="Bundled corpus: pieces per label."),
    kind: str = typer.Option("both", "--kind", help="ASAP: performances, scores or both (default)."),
    full: bool = typer.Option(False, "--full", help="Bundled corpus: export every piece music21 has."),
    sustain: bool = typer.Option(True, "--sustain/--no-sustain", help="Lengthen notes held by the sustain pedal."),
    max_size_mb: float = typer.Option(64, "--max-size-mb", help="Refuse MIDI files larger than this."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the summary as JSON here."),
) -> None:
    """Read every MIDI file of SOURCE once into a prepared corpus (resumable, shardable)."""
    from partita.data.prepare import ReadOptions, parse_shard, prepare

    options = ReadOptions(sustain=sustain, max_bytes=int(max_size_mb * 2**20))
    source_options = {"labels_csv": labels_csv, "composite": composite, "kind": kind}
    wanted = [lab.strip() for lab in labels.split(",") if lab.strip()] if labels is not None else None
    if labels is not None and not wanted:
        raise PartitaError("--labels needs at least one label, e.g. --labels Bach,Mozart")
    if (source == "bundled" or format == "bundled") and labels_from != "auto":
        raise PartitaError("--labels-from reads plain folders; the bundled corpus has its own labels")
    if source == "bundled" or format == "bundled":
        source_options = {"max_per_label": max_per_label, "full": full, "workers": workers}
        with progress_bar("exporting music21 corpus") as update:
            source_options["progress"] = update
            from partita.data.sources.bundled import DEFAULT_MAX_PER_LABEL, export_bundled

            export_bundled(max_per_label=max_per_label or DEFAULT_MAX_PER_LABEL, full=full, workers=workers, progress=update)
        source_options.pop("progress")
    _check_fraction("--valid", valid)
    _check_fraction("--test", test)
    _check_fraction("--unseen", unseen)
    if split_mode not in ("pieces", "labels"):
        raise PartitaError(f"--split-mode must be 'pieces' or 'labels', not {split_mode!r}")
    with progress_bar("reading MIDI") as update:
        result = prepare(
            source,
            out,
            format=format,
            workers=workers,
            shard=parse_shard(shard),
            options=options,
            seed=seed,
            valid=valid,
            test=test,
            split_mode=split_mode,
            unseen=unseen,
            labels=wanted,
            min_pieces=min_pieces,
            labels_from=labels_from,
            source_options=source_options,
            progress=update,
        )
    summary = result.corpus.summary()
    print_corpus_summary(summary)
    _print_bad_files(summary)
    write_json(json_out, summary)


def _check_fraction(name: str, value: float) -> None:
    if not 0 <= value < 1:
        raise PartitaError(f"{name} must be a fraction between 0 and 1, not {value}")


def _print_bad_files(summary: dict, limit: int = 10) -> None:
    bad = summary["bad_files"]
    for row in bad[:limit]:
        console.print(f"  skipped {row['id']}: {row['message']}", markup=False, highlight=False)
    if len(bad) > limit:
        console.print(f"  ... and {len(bad) - limit} more (see 'partita data info --json')")


@app.command("merge")
def merge_cmd(
    shards: list[Path] = typer.Argument(..., help="The corpus folders written by 'prepare --shard I/N'."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the merged corpus."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the summary as JSON here."),
) -> None:
    """Join the corpora of sharded prepare runs into one corpus."""
    from partita.data.prepare import merge

    corpus = merge(shards, out)
    summary = corpus.summary()
    print_corpus_summary(summary)
    write_json(json_out, summary)


@app.command("info")
def info_cmd(
    corpus: Path = typer.Argument(..., help="A prepared corpus folder."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the summary as JSON here."),
    bad: bool = typer.Option(False, "--bad", help="List every skipped file with its reason."),
) -> None:
    """Print a prepared corpus's summary: pieces ok/bad, hours, notes, labels, splits."""
    from partita.data.corpus import Corpus

    summary = Corpus(corpus).summary()
    print_corpus_summary(summary)
    _print_bad_files(summary, limit=len(summary["bad_files"]) if bad else 10)
    write_json(json_out, summary)


def _tracked(items, update, total):
    """Pass ``items`` through, reporting progress as they are consumed."""
    for n, item in enumerate(items, 1):
        yield item
        update(n, total)


@tokenizer_app.command("train")
def tokenizer_train_cmd(
    corpus: Path = typer.Argument(..., help="A prepared corpus folder."),
    vocab: Optional[int] = typer.Option(None, "--vocab", help="Vocabulary size: base tokens plus learned merges "
                                        "(default: chosen from the corpus's notes, one merge per ~1,000 base tokens; said on stdout)."),
    model: str = typer.Option("BPE", "--model", help="BPE or Unigram."),
    tokenizer: str = typer.Option("REMI", "--tokenizer", help="miditok tokenizer: REMI, TSD, MIDILike or Structured."),
    split: str = typer.Option("train", "--split", help="Which split to learn from ('all' for every piece)."),
    tracks: str = typer.Option("keep", "--tracks", help="keep: named tracks that share a program (POP909's MELODY, BRIDGE, "
                               "PIANO) stay apart, written with programs of their own and decoded back; merge: one track per program."),
    metre: str = typer.Option("beats", "--metre", help="beats: a file written in 1/4 is read in bars of its beats' grouping "
                              "(4, or 3), said once for the corpus; written: as the file says."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Tokenizer JSON file (default: CORPUS/tokenizer.json)."),
) -> None:
    """Learn BPE (or Unigram) merges on a prepared corpus and save the tokenizer as one JSON file."""
    from partita.data.corpus import Corpus
    from partita.represent.tokens import (learn_track_roles, make_tokenizer, save_tokenizer, set_options,
                                          suggest_vocab_size, train_tokenizer)

    if model not in ("BPE", "Unigram"):
        raise PartitaError(f"--model must be BPE or Unigram, not {model!r}")
    if tracks not in ("keep", "merge"):
        raise PartitaError(f"--tracks must be keep or merge, not {tracks!r}")
    if metre not in ("beats", "written"):
        raise PartitaError(f"--metre must be beats or written, not {metre!r}")
    c = Corpus(corpus)
    chosen = c.indices(split=None if split == "all" else split)
    if not chosen:
        raise PartitaError(f"{corpus}: no pieces in split {split!r}")
    base = make_tokenizer(tokenizer)
    roles = learn_track_roles(c.score(i) for i in chosen) if tracks == "keep" else []
    set_options(base, roles=roles, metre_from_beats=metre == "beats")
    if roles:
        shown = ", ".join(f"{r['name']} (program {r['program']}" + (f", written as {r['token_program']})" if r["token_program"] != r["program"] else ")")
                          for r in roles)
        console.print(f"tracks kept apart: {shown}; --tracks merge for one track per program", markup=False, highlight=False)
    if vocab is None:
        notes = int(sum(c.pieces[i]["n_notes"] for i in chosen))
        vocab, why = suggest_vocab_size(len(base), notes)
        console.print(f"vocabulary {vocab:,} (no --vocab): {why}", markup=False, highlight=False)
    with progress_bar(f"learning {model} on {len(chosen)} pieces") as update:
        trained = train_tokenizer(_tracked((c.score(i) for i in chosen), update, len(chosen)), vocab_size=vocab, model=model, base=base)
    path = save_tokenizer(trained, out or c.path / "tokenizer.json")
    console.print(f"tokenizer: {tokenizer} + {model}, {len(trained)} tokens, learned on {len(chosen)} {split} pieces -> {path}")


@app.command("tokenize")
def tokenize_cmd(
    corpus: Path = typer.Argument(..., help="A prepared corpus folder."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Tokenizer JSON (default: CORPUS/tokenizer.json, else plain REMI)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the token streams (default: CORPUS/tokens)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing token streams."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Worker processes (default: all cores); same output for any number."),
) -> None:
    """Encode every piece of a corpus into memory-mapped token streams (with bar and position per token)."""
    from partita.data.corpus import Corpus
    from partita.represent.tokens import load_tokenizer, make_tokenizer, write_token_streams

    c = Corpus(corpus)
    if tokenizer is None and (c.path / "tokenizer.json").exists():
        tokenizer = c.path / "tokenizer.json"
    tok = load_tokenizer(tokenizer) if tokenizer else make_tokenizer()

    out = out or c.path / "tokens"
    if out.exists() and not overwrite:
        raise PartitaError(f"{out} already exists; pass --overwrite to replace it")
    if workers is not None and workers < 1:
        raise PartitaError(f"--workers must be 1 or more, not {workers}")
    with progress_bar("tokenizing") as update:
        items = [(r["id"], c.score_ref(i)) for i, r in enumerate(c.pieces)]
        streams = write_token_streams(items, tok, out, overwrite=overwrite, workers=workers or os.cpu_count() or 1, progress=update)
    total = int(streams.lengths.sum()) if len(streams) else 0
    console.print(f"{len(streams)} pieces, {total:,} tokens ({total / max(len(streams), 1):,.0f} per piece) -> {out}")
    for piece_id, reason in streams.skipped[:10]:
        console.print(f"  skipped {piece_id}: {reason}", markup=False, highlight=False)
    if streams.metre_assumed:
        n = sum(streams.metre_assumed.values())
        how = ", ".join(f"{k.split(' as ')[1]}: {v}" for k, v in streams.metre_assumed.items())
        err_console.print(f"warning: {n} of {len(streams)} pieces write a 1/4 time signature (one beat a bar); they were "
                          f"read in bars of their beats' grouping ({how}), from the beat where each file's harmony changes most "
                          f"(a tokenizer trained with --metre written keeps 1/4)", markup=False, highlight=False)


@app.command("copy-index")
def copy_index_cmd(
    corpus: Path = typer.Argument(..., help="The prepared corpus the model was trained on."),
    model: Path = typer.Option(..., "--model", "-m", help="A gpt bundle folder or a shipped model's name (gpt-piano, gpt-small): its tokenizer hashes the bars."),
    split: str = typer.Option("train", "--split", help="Pieces to index: train (default), a list like train,valid, or all."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for copies.npz + copies.json (default: the bundle folder, recorded in its card)."),
) -> None:
    """Hash every bar of the training pieces (hashes only, no music) so that 'partita generate
    --check-copies' can tell when a sample repeats bars of a training piece."""
    from partita.generation.copies import build_copy_index

    command = f"partita data copy-index {corpus} --model {model} --split {split}"
    if not model.exists() and "/" not in str(model):
        from partita.pretrained import bundle_path

        model = bundle_path(str(model))
    with progress_bar("hashing bars") as update:
        index = build_copy_index(corpus, model, split=split, out=out, progress=update, command=command)
    console.print(f"copy index: {index.bars:,} bars with notes of {len(index):,} {split} pieces -> {index.path} "
                  f"({index.meta['tokens_from']})")

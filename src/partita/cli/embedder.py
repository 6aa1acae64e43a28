"""``partita train embedder``, ``partita train featnet`` and ``partita eval embedder``: the piece embedders."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from partita.cli.common import console, progress_bar, write_json
from partita.cli.evaluate import app as eval_app
from partita.cli.train import app as train_app
from partita.cli.train import print_trained, with_run_options
from partita.errors import PartitaError


def _labels(text: Optional[str]) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


@train_app.command("embedder")
@with_run_options
def train_embedder_cmd(
    run_config,
    data: Path = typer.Option(..., "--data", help="A prepared corpus (partita data prepare)."),
    out: Path = typer.Option(Path("runs/embedder"), "--out", "-o", help="Run folder: checkpoints, logs, bundle."),
    preset: str = typer.Option("small", "--preset", help="tiny, small (CPU), base (GPU) or harmonixr (its published set-up)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of SiaViTConfig fields."),
    set_: list[str] = typer.Option([], "--set", help="Override a config field: --set window_seconds=60 (repeatable)."),
    loss: str = typer.Option("supcon", "--loss", help="supcon (supervised contrastive) or contrastive (dynamic margin)."),
    window_seconds: Optional[float] = typer.Option(None, "--window-seconds", help="Crop length in seconds (default: the preset's, 30 s for small)."),
    labels_per_batch: int = typer.Option(8, "--labels-per-batch", "-P", help="Labels drawn per batch."),
    per_label: int = typer.Option(4, "--per-label", "-K", help="Pieces (one crop each) per label per batch (--batch-size sets it to batch / P)."),
    transpose: int = typer.Option(0, "--transpose", help="Random transposition of each crop by up to N semitones."),
    noise: float = typer.Option(0.1, "--noise", help="Multiplicative noise on the rolls (0 = off)."),
    temperature: float = typer.Option(0.1, "--temperature", help="SupCon temperature."),
    margin_start: float = typer.Option(0.1, "--margin-start", help="Contrastive loss: the first (low) margin."),
    margin_max: float = typer.Option(1.2, "--margin-max", help="Contrastive loss: the largest margin."),
    unseen_labels: Optional[str] = typer.Option(None, "--unseen-labels", help="Comma-separated labels never trained on (to test 'unknown' detection)."),
    val_windows: int = typer.Option(4, "--val-windows", help="Windows per validation piece."),
) -> None:
    """Train the SiaViT embedder (siamese ViT on helical pianorolls); writes checkpoints, logs and a bundle."""
    from partita.models.siavit import SiaViTConfig
    from partita.train.common import apply_overrides, command_line
    from partita.train.embedder import train_embedder

    overrides = apply_overrides(SiaViTConfig, {}, config, set_)
    if window_seconds is not None:
        if not 0 < window_seconds <= 600:
            raise PartitaError(f"--window-seconds must be between 0 and 600, not {window_seconds}")
        overrides["window_seconds"] = window_seconds
    card = train_embedder(
        data, out, run_config, preset=preset, overrides=overrides, loss=loss, labels_per_batch=labels_per_batch,
        per_label=per_label, transpose=transpose, noise=noise, temperature=temperature, margin_start=margin_start,
        margin_max=margin_max, unseen_labels=_labels(unseen_labels), val_windows=val_windows, command=command_line(),
    )
    print_trained(card, out / "bundle", f"partita eval embedder --model {out / 'bundle'} --data {data}")


@train_app.command("featnet")
@with_run_options
def train_featnet_cmd(
    run_config,
    data: Path = typer.Option(..., "--data", help="A prepared corpus (partita data prepare); works share a group, composers a label."),
    out: Path = typer.Option(Path("runs/featnet"), "--out", "-o", help="Run folder: checkpoints, logs, bundle."),
    preset: str = typer.Option("small", "--preset", help="tiny, small (a linear projection) or mlp (one hidden layer)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of FeatNetConfig fields."),
    set_: list[str] = typer.Option([], "--set", help="Override a config field: --set dim=128 (repeatable)."),
    composer_weight: float = typer.Option(0.1, "--composer-weight", help="Weight of same-composer crops as positives (same-work crops: 1)."),
    temperature: float = typer.Option(0.1, "--temperature", help="Contrastive temperature."),
    works_per_batch: int = typer.Option(48, "--works-per-batch", "-W", help="Works drawn per batch."),
    per_work: int = typer.Option(4, "--per-work", "-K", help="Crops per work per batch (--batch-size sets it to batch / W)."),
    crops: int = typer.Option(16, "--crops", help="Augmented crops drawn per train piece before training."),
    crop_seconds: str = typer.Option("30,90", "--crop-seconds", help="MIN,MAX length of a crop in seconds."),
    transpose: int = typer.Option(0, "--transpose", help="Transpose crops by up to N semitones."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Processes that draw the crops (default: all cores)."),
) -> None:
    """Train the feature embedder (a learned projection of each piece's musical descriptor)."""
    from partita.models.featnet import FeatNetConfig
    from partita.train.common import apply_overrides, command_line
    from partita.train.featnet import train_featnet

    overrides = apply_overrides(FeatNetConfig, {}, config, set_)
    try:
        low, high = (float(x) for x in crop_seconds.split(","))
    except ValueError:
        raise PartitaError(f"--crop-seconds takes MIN,MAX in seconds, not {crop_seconds!r}") from None
    card = train_featnet(
        data, out, run_config, preset=preset, overrides=overrides, composer_weight=composer_weight,
        temperature=temperature, works_per_batch=works_per_batch, per_work=per_work, crops=crops,
        crop_seconds=(low, high), transpose=transpose, workers=workers, command=command_line(),
    )
    print_trained(card, out / "bundle", f"partita eval embedder --model {out / 'bundle'} --data {data}")


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


@eval_app.command("embedder")
def eval_embedder_cmd(
    data: Path = typer.Option(..., "--data", help="The prepared corpus (train = reference, valid = thresholds)."),
    model: Optional[Path] = typer.Option(None, "--model", help="A siavit bundle (default: the shipped model)."),
    split: str = typer.Option("test", "--split", help="Which split to score."),
    compare: list[str] = typer.Option([], "--compare", help="Another embedder to put side by side: NAME=BUNDLE (repeatable)."),
    windows: int = typer.Option(8, "--windows", help="Windows averaged per piece."),
    batch_size: int = typer.Option(32, "--batch-size", "-b"),
    seed: int = typer.Option(0, "--seed"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON here."),
) -> None:
    """Pair accuracy, ROC-AUC, attribution (top-1/3, per label), mAP@10, silhouette, retrieval across
    renditions (performance -> score / other performances) and unknown detection, vs feature baselines."""
    from partita.evaluate.embedder import evaluate_embedder

    others = {}
    for item in compare:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise PartitaError(f"--compare takes NAME=BUNDLE, not {item!r}")
        others[name.strip()] = Path(path.strip())
    with progress_bar("embedding") as update:
        results = evaluate_embedder(model, data, split=split, compare=others, windows=windows, batch_size=batch_size,
                                    seed=seed, progress=lambda name: update)
    p = results["pieces"]
    console.print(f"{results['split']} split: {p['test']} test pieces of {len(results['known_labels'])} known labels; "
                  f"reference (train) {p['ref']}, thresholds on valid {p['valid']}, unseen-label pieces {p['unseen']}")
    cols = ("pair_acc", "pair_auc", "top1", "top3", "ece", "map@10", "silhouette")
    for task, t in results["tasks"].items():
        counts = ", ".join(f"{l} {n}" for l, n in t["test_per_label"].items())
        table = Table(title=f"{task} (test pieces: {counts})", title_justify="left")
        table.add_column("model")
        for col in cols:
            table.add_column(col, justify="right")
        for name, row in t["rows"].items():
            table.add_row(name, *(_fmt(row.get(c)) for c in cols))
        console.print(table)
        per_label = Table(title=f"{task}: top-1 per label", title_justify="left")
        per_label.add_column("label")
        per_label.add_column("test pieces", justify="right")
        names = [n for n, row in t["rows"].items() if "per_label" in row]
        for name in names:
            per_label.add_column(name, justify="right")
        for label, n in t["test_per_label"].items():
            per_label.add_row(label, str(n), *(_fmt(t["rows"][m]["per_label"].get(label, {}).get("top1")) for m in names))
        console.print(per_label)
    if "renditions" in results:
        table = Table(title=f"retrieval across renditions ({results['split']} split, "
                            f"{results['renditions_works']} works with performances)", title_justify="left")
        for col in ("model", "task", "queries", "gallery", "R@1", "R@5"):
            table.add_column(col, justify="left" if col in ("model", "task") else "right")
        for name, tasks_ in results["renditions"].items():
            for task, r in tasks_.items():
                table.add_row(name, task, str(r["queries"]), str(r["gallery"]), _fmt(r["R@1"]), _fmt(r["R@5"]))
        console.print(table)
    if "unknown" in results:
        table = Table(title=f"unknown detection: {', '.join(results['unseen_labels'])} never trained on "
                            f"(threshold accepts {95}% of known validation pieces)", title_justify="left")
        for col in ("model", "unseen called unknown", "known test called unknown", "ROC-AUC"):
            table.add_column(col, justify="left" if col == "model" else "right")
        for name, row in results["unknown"].items():
            table.add_row(name, _fmt(row["unknown_rate_unseen"]), _fmt(row["unknown_rate_known_test"]), _fmt(row["auc"]))
        console.print(table)
    write_json(json_out, results)

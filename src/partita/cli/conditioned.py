"""``partita train tvae``, ``partita train classifier``, ``partita eval conditioned``,
``partita eval classifier`` and ``partita classify``: the composer-conditioned transformer VAE
and the GRU composer classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from partita.cli.common import console, err_console, progress_bar, write_json
from partita.cli.evaluate import app as eval_app
from partita.cli.train import app as train_app
from partita.cli.train import print_trained, with_run_options
from partita.errors import PartitaError


def _labels(text: Optional[str]) -> Optional[list[str]]:
    if not text:
        return None
    return [x.strip() for x in text.split(",") if x.strip()]


@train_app.command("classifier")
@with_run_options
def train_classifier_cmd(
    run_config,
    data: Path = typer.Option(..., "--data", help="A prepared, tokenized corpus (partita data tokenize)."),
    out: Path = typer.Option(Path("runs/classifier"), "--out", "-o", help="Run folder: checkpoints, logs, bundle."),
    preset: Optional[str] = typer.Option(None, "--preset", help="tiny, small (CPU; the default) or base; a resumed run keeps its own."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of ClassifierConfig fields."),
    set_: list[str] = typer.Option([], "--set", help="Override a config field: --set d_hidden=256 (repeatable)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated label set (default: labels with >= --min-pieces pieces)."),
    min_pieces: int = typer.Option(40, "--min-pieces", help="Labels with at least this many pieces, when --labels is not given."),
) -> None:
    """Train the GRU composer classifier on random token segments; writes RUN/bundle with test metrics."""
    from partita.models.classifier import ClassifierConfig
    from partita.train.classifier import train_classifier
    from partita.train.common import apply_overrides, command_line

    overrides = apply_overrides(ClassifierConfig, {}, config, set_)
    card = train_classifier(data, out, run_config, preset=preset, overrides=overrides, labels=_labels(labels),
                            min_pieces=min_pieces, command=command_line())
    console.print(f"labels: {', '.join(card['labels'])}")
    test = card["metrics"].get("test")
    if test:
        _print_classifier_eval(test)
    print_trained(card, out / "bundle", f"partita classify FILE --model {out / 'bundle'}")


@train_app.command("tvae")
@with_run_options
def train_tvae_cmd(
    run_config,
    data: Path = typer.Option(..., "--data", help="A prepared, tokenized corpus (partita data tokenize)."),
    out: Path = typer.Option(Path("runs/tvae"), "--out", "-o", help="Run folder: checkpoints, logs, bundle."),
    preset: Optional[str] = typer.Option(None, "--preset", help="tiny, small (CPU; the default) or base; a resumed run keeps its own."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of TVAEConfig fields."),
    set_: list[str] = typer.Option([], "--set", help="Override a config field: --set d_latent=32 (repeatable)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated composer set (default: labels with >= --min-pieces pieces)."),
    min_pieces: int = typer.Option(40, "--min-pieces"),
    kl_warmup: int = typer.Option(500, "--kl-warmup", help="Steps over which the KL weight rises from 0 to --beta."),
    beta: float = typer.Option(1.0, "--beta", help="Final KL weight."),
    free_bits: float = typer.Option(0.1, "--free-bits", help="Nats per latent dimension the KL is not pushed below."),
) -> None:
    """Train the composer-conditioned transformer VAE on fixed-length token segments."""
    from partita.models.tvae import TVAEConfig
    from partita.train.common import apply_overrides, command_line
    from partita.train.tvae import train_tvae

    overrides = apply_overrides(TVAEConfig, {}, config, set_)
    card = train_tvae(data, out, run_config, preset=preset, overrides=overrides, labels=_labels(labels),
                      min_pieces=min_pieces, kl_warmup=kl_warmup, beta=beta, free_bits=free_bits, command=command_line())
    console.print(f"composers: {', '.join(card['labels'])}")
    print_trained(card, out / "bundle", f"partita vae sample --model {out / 'bundle'} --composer {card['labels'][0]}")


def _print_classifier_eval(r: dict) -> None:
    table = Table(title=f"{r['split']} split: {r['pieces']} pieces ({r['windows']} windows), {len(r['labels'])} labels",
                  title_justify="left")
    table.add_column("model")
    table.add_column("accuracy", justify="right")
    table.add_column("balanced accuracy", justify="right")
    table.add_row("GRU classifier, per piece (windows voted)", f"{r['accuracy']:.3f}", f"{r['balanced_accuracy']:.3f}")
    table.add_row("GRU classifier, single windows", f"{r['window_accuracy']:.3f}", "")
    base = r.get("feature_logreg") or {}
    if base:
        table.add_row("features + logistic regression, per piece", f"{base['accuracy']:.3f}", f"{base['balanced_accuracy']:.3f}")
    table.add_row(f"majority class ({r['majority_class']})", f"{r['majority_accuracy']:.3f}", f"{r['chance']:.3f}")
    table.add_row("chance (1/K)", f"{r['chance']:.3f}", f"{r['chance']:.3f}")
    console.print(table)


@eval_app.command("classifier")
def eval_classifier_cmd(
    model: Optional[Path] = typer.Option(None, "--model", help="A classifier bundle (default: the shipped one)."),
    data: Path = typer.Option(..., "--data", help="The prepared corpus, tokenized with the model's tokenizer."),
    split: str = typer.Option("test", "--split"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON here."),
) -> None:
    """Per-piece accuracy of a composer classifier vs chance, majority and features + logistic regression."""
    from partita.evaluate.conditioned import evaluate_classifier

    r = evaluate_classifier(_classifier_path(model), data, split=split)
    _print_classifier_eval(r)
    write_json(json_out, r)


@eval_app.command("conditioned")
def eval_conditioned_cmd(
    model: Path = typer.Option(..., "--model", help="A tvae bundle (partita train tvae's RUN/bundle)."),
    classifier: Optional[Path] = typer.Option(None, "--classifier", help="A classifier bundle (default: the shipped one)."),
    data: Path = typer.Option(..., "--data", help="The prepared corpus (tokenized with the models' tokenizer)."),
    split: str = typer.Option("test", "--split"),
    n: int = typer.Option(32, "-n", help="Samples per composer."),
    temperature: float = typer.Option(1.0, "--temperature"),
    top_p: float = typer.Option(0.95, "--top-p"),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(Path("eval-conditioned"), "--out", "-o", help="Folder for confusion.png and latent_map.png."),
    map_method: str = typer.Option("tsne", "--map", help="Latent map projection: tsne or pca."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON here."),
) -> None:
    """Conditioned VAE: samples per composer judged by the classifier, latent cosine ratio and silhouette, plots."""
    from partita.evaluate.conditioned import evaluate_conditioned

    if n < 1:
        raise PartitaError(f"-n must be >= 1, got {n}")
    with progress_bar("sampling composers") as bar:
        r = evaluate_conditioned(model, _classifier_path(classifier), data, split=split, n=n, seed=seed,
                                 temperature=temperature, top_p=top_p, out_dir=out, map_method=map_method, progress=bar)
    _print_classifier_eval(r["classifier"])
    g = r["generated"]
    table = Table(title=f"TVAE samples ({n} per composer, seed {seed}) classified; chance {r['chance']:.3f}", title_justify="left")
    table.add_column("composer")
    table.add_column("classified as asked", justify="right")
    for name, v in g["per_label"].items():
        table.add_row(name, f"{v['accuracy']:.3f}")
    table.add_row("all", f"{g['accuracy']:.3f}")
    if "real_windows" in r:
        w = r["real_windows"]
        table.add_row(f"(real {split} windows of {w['tokens']} tokens)", f"{w['accuracy']:.3f}")
    console.print(table)
    lat = r["latent"]
    if "vae" in lat:
        t2 = Table(title=f"latent space: {lat['windows']} {split} windows", title_justify="left")
        for col in ("vectors", "cos within", "cos across", "relative cosine", "silhouette"):
            t2.add_column(col, justify="left" if col == "vectors" else "right")
        for name, key in (("TVAE posterior means", "vae"), ("hand-made features (baseline)", "features")):
            v = lat[key]
            rc = v["relative_cosine"]
            t2.add_row(name, f"{rc['within']:.3f}", f"{rc['across']:.3f}", f"{rc['relative']:.3f}", f"{v['silhouette']:.3f}")
        console.print(t2)
    for key in ("confusion_png",):
        if key in r:
            console.print(f"wrote {r[key]}")
    if "map_png" in lat:
        console.print(f"wrote {lat['map_png']}")
    write_json(json_out, r)


def _classifier_path(model: Optional[Path]) -> Path:
    if model is not None:
        from partita.search.choice import shipped_model

        return shipped_model(model)  # a folder, or a shipped name (typer hands a Path)
    from partita import pretrained

    return pretrained.bundle_path(pretrained.CLASSIFIER)


def classify(
    files: list[Path] = typer.Argument(..., help="MIDI files to classify."),
    model: Optional[Path] = typer.Option(None, "--model", help="A classifier bundle (default: the shipped one)."),
    top_k: int = typer.Option(3, "--top-k", "-k", help="Labels shown per file."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON here."),
) -> None:
    """Name the likely composer of MIDI files (top-k labels with probabilities)."""
    from partita.evaluate.conditioned import classify_files

    if top_k < 1:
        raise PartitaError(f"--top-k must be >= 1, got {top_k}")
    if model is None:  # one choice for every command: piano music goes to the piano index's composers
        from partita.search import choose_index

        choice = choose_index(list(files))
        if choice.index_name == "piano-index":
            from partita.cli.search import attribute

            return attribute(list(files), index=None, k=top_k, model=None, json_path=json_out)
    results = classify_files(_classifier_path(model), files, top_k=top_k)
    good = [r for r in results if "error" not in r]
    if good:
        title = f"Composer ({Path(_classifier_path(model)).name}" + (f"; {choice.reason})" if model is None else ")")
        table = Table(title=title, title_justify="left")
        table.add_column("file", overflow="fold")
        for k in range(min(top_k, len(good[0]["top"]))):
            table.add_column(f"#{k + 1}")
        for r in good:
            table.add_row(r["file"], *[f"{t['label']} {t['probability']:.2f}" for t in r["top"]])
        console.print(table)
    for r in results:
        if "error" in r:
            err_console.print(f"skipped {r['file']}: {r['error']}", markup=False, highlight=False)
    write_json(json_out, {"model": str(_classifier_path(model)), "choice": choice.to_dict() if model is None else None,
                          "results": results})
    if not good:
        raise PartitaError(f"none of the {len(results)} file(s) could be classified (see the reasons above)")

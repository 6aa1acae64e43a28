"""The ``partita`` command: a thin Typer layer over the library.

Every mistake a user can fix is one line on stderr and a non-zero exit; ``--debug`` (anywhere on
the command line) shows the traceback instead.
"""

from __future__ import annotations

import sys

import click
import typer

# Recent typer vendors its own copy of click: catch both families of exceptions.
try:
    from typer._click.exceptions import ClickException as _TyperClickException
except ImportError:  # pragma: no cover - older typer uses click itself
    _TyperClickException = click.ClickException
_EXIT = tuple({click.exceptions.Exit, typer.Exit})
_ABORT = tuple({click.exceptions.Abort, typer.Abort, KeyboardInterrupt})
_USAGE = tuple({click.ClickException, _TyperClickException})

from partita.cli import data as data_cmds
from partita.cli import demo as demo_cmds
from partita.cli import generate as generate_cmds
from partita.cli import accompany as accompany_cmds
from partita.cli import infill as infill_cmds
from partita.cli import evaluate as eval_cmds
from partita.cli import train as train_cmds
from partita.cli import show as show_cmds
from partita.cli import vae as vae_cmds
from partita.cli import conditioned as conditioned_cmds
from partita.cli import search as search_cmds
from partita.cli import serve as serve_cmds
from partita.cli import embedder as embedder_cmds  # noqa: F401
from partita.cli.common import err_console
from partita.errors import PartitaError

app = typer.Typer(
    name="partita",
    help="Deep learning on symbolic music: prepare MIDI corpora, embed, attribute, generate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_cmds.app, name="data")
app.add_typer(train_cmds.app, name="train")
app.add_typer(eval_cmds.app, name="eval")
app.add_typer(vae_cmds.app, name="vae")
app.command("demo")(demo_cmds.demo)
app.command("generate")(generate_cmds.generate)
app.command("infill")(infill_cmds.infill)
app.command("accompany")(accompany_cmds.accompany)
app.command("render")(show_cmds.render)
app.command("plot")(show_cmds.plot)
app.command("classify")(conditioned_cmds.classify)
app.command("embed")(search_cmds.embed)
app.command("similar")(search_cmds.similar)
app.command("attribute")(search_cmds.attribute)
app.command("map")(search_cmds.map_cmd)
app.command("serve")(serve_cmds.serve)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """partita: deep learning on symbolic music."""


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    try:
        code = app(args=args, prog_name="partita", standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C into a returned exit code when not standalone
            raise KeyboardInterrupt
    except _EXIT as e:
        sys.exit(e.exit_code)
    except _USAGE as e:
        e.show()
        sys.exit(e.exit_code)
    except _ABORT:
        err_console.print("interrupted: work finished so far is kept; run the same command again to go on")
        sys.exit(130)
    except PartitaError as e:
        if debug:
            raise
        err_console.print(f"error: {e}", markup=False, highlight=False)
        sys.exit(2)
    except Exception as e:  # a bug: still one line unless the user asks for more
        if debug:
            raise
        msg = f"{type(e).__name__}: {e}".splitlines()[0]
        err_console.print(f"error: {msg} (run again with --debug for the traceback)", markup=False, highlight=False)
        sys.exit(1)

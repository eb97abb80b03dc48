"""`aivd`: inspect images, evaluate on DeepPCB, train the built-in models, run benchmarks and the demo.

This module only assembles the command line: each command and group lives in its own module of aivd.cli, and
none of them imports this one."""

from __future__ import annotations

import sys

import typer

from aivd.cli.bench import bench_app
from aivd.cli.config import config_app
from aivd.cli.data import data_app
from aivd.cli.db import db_app
from aivd.cli.demo import demo, synth
from aivd.cli.eval import eval_app
from aivd.cli.export import export_command
from aivd.cli.finetune import finetune_app
from aivd.cli.inspect import inspect
from aivd.cli.kb import kb_app
from aivd.cli.keys import keys_app
from aivd.cli.models import models_app
from aivd.cli.schema import schema
from aivd.cli.serve import serve_app
from aivd.cli.simulate import simulate_app
from aivd.cli.train import train_app
from aivd.cli.ui import error_line
from aivd.cli.users import users_app
from aivd.cli.watch import watch
from aivd.core.errors import AivdError

app = typer.Typer(help="Edge-cloud visual inspection of industrial defects.", no_args_is_help=True, add_completion=False)
app.command()(inspect)
app.command("export")(export_command)
app.command()(demo)
app.command()(synth)
app.command()(schema)
app.command()(watch)
app.add_typer(train_app, name="train")
app.add_typer(bench_app, name="bench")
app.add_typer(eval_app, name="eval")
app.add_typer(serve_app, name="serve")
app.add_typer(simulate_app, name="simulate")
app.add_typer(finetune_app, name="finetune")
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(kb_app, name="kb")
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(users_app, name="users")


def main() -> None:
    try:
        app()
    except AivdError as error:  # a user-facing error no command turned into its own line: still one line, no traceback
        error_line(str(error))
        sys.exit(2)


if __name__ == "__main__":
    main()

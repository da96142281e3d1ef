"""The ``sagebuild`` command line (typer).

Commands: ``matrix`` (list/filter targets), ``render`` (regenerate / ``--check`` the generated
files). ``build``/``test`` are added by their own module. Every command loads the project once
through :func:`load` and turns a :class:`SagebuildError` into one message + exit code 2.

Shared pieces for other commands: :data:`MatrixOption`, the filter option types, :func:`load`,
:func:`selected` and the :data:`console` / :data:`err_console`.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__, render as render_mod
from .errors import EXIT_FAILURE, EXIT_USAGE, SagebuildError
from .matrix import Project, Target, load_project, select

app = typer.Typer(
    name="sagebuild",
    help="Build the sageattention wheel matrix (matrix.yaml) with Docker Buildx.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

# ---- shared option types --------------------------------------------------------------------
MatrixOption = Annotated[
    Optional[Path],
    # $SAGEBUILD_MATRIX is read by find_matrix, not typer, so that its errors name it
    typer.Option(
        "--matrix",
        metavar="PATH",
        help="matrix.yaml (or its directory); default: $SAGEBUILD_MATRIX, else found from the "
        "current directory upwards",
        show_default=False,
    ),
]
NamesArg = Annotated[
    Optional[list[str]],
    typer.Argument(metavar="NAMES", help="target, test-target or group names (e.g. linux, pytorch28, default)",
                   show_default=False),
]
PlatformOpt = Annotated[
    Optional[list[str]], typer.Option("--platform", metavar="PLATFORM", help="linux, windows (repeatable)")
]
PythonOpt = Annotated[
    Optional[list[str]], typer.Option("--python", metavar="VERSION", help="3.12, 312, cp312 or abi3 (repeatable)")
]
TorchOpt = Annotated[
    Optional[list[str]], typer.Option("--torch", metavar="VERSION", help="2.8, 2.8.0 or 28 (repeatable)")
]
CudaOpt = Annotated[
    Optional[list[str]], typer.Option("--cuda", metavar="VERSION", help="12.9, 12.9.1, cu129 (repeatable)")
]


def fail(err: SagebuildError) -> typer.Exit:
    """Print ONE error message and return the Exit to raise (code 2 for bad input)."""
    err_console.print(f"[bold red]error:[/] {escape(err.format())}", highlight=False)
    return typer.Exit(err.exit_code)


def checked(fn, *args):
    """``fn(*args)``, where a SagebuildError becomes :func:`fail`'s one message and exit."""
    try:
        return fn(*args)
    except SagebuildError as err:
        raise fail(err) from None


def load(matrix: Path | None) -> Project:
    return checked(load_project, matrix)


def selected(
    project: Project,
    names: list[str] | None,
    platform: list[str] | None = None,
    python: list[str] | None = None,
    torch: list[str] | None = None,
    cuda: list[str] | None = None,
) -> list[Target]:
    return checked(select, project, names, platform, python, torch, cuda)


# ---- commands -------------------------------------------------------------------------------


def _version(value: bool) -> None:
    if value:
        console.print(f"sagebuild {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="show the version")
    ] = False,
) -> None:
    """Build the sageattention wheel matrix (matrix.yaml) with Docker Buildx."""


class Format(str, Enum):
    table = "table"
    json = "json"
    names = "names"
    github = "github"


@app.command("matrix")
def matrix_cmd(
    names: NamesArg = None,
    platform: PlatformOpt = None,
    python: PythonOpt = None,
    torch: TorchOpt = None,
    cuda: CudaOpt = None,
    fmt: Annotated[
        Format, typer.Option("--format", "-f", help="table, json, names or github")
    ] = Format.table,
    matrix: MatrixOption = None,
) -> None:
    """List the targets of the matrix (all, or those the names and filters select)."""
    project = load(matrix)
    targets = selected(project, names, platform, python, torch, cuda)
    if fmt is Format.names:
        for t in targets:
            sys.stdout.write(t.name + "\n")
    elif fmt is Format.json:
        sys.stdout.write(json.dumps([t.to_dict() for t in targets], indent=2) + "\n")
    elif fmt is Format.github:
        # compact, one line: `echo "matrix=$(sagebuild matrix --format github)" >> $GITHUB_OUTPUT`
        sys.stdout.write(json.dumps({"include": [t.to_dict() for t in targets]}) + "\n")
    else:
        table = Table(title=f"{len(targets)} of {len(project.targets)} targets", title_justify="left")
        for col in ("target", "platform", "python", "torch", "CUDA", "arch list", "wheel"):
            table.add_column(col, overflow="fold")
        for t in targets:
            table.add_row(
                t.name, t.platform_tag, t.python or "abi3 (cp39)", t.torch,
                f"{t.cuda} ({t.cuda_source})", t.arch_list, t.wheel_filename,
            )
        Console(width=max(console.width, 200) if not console.is_terminal else None).print(table)
        in_sel = {t.name for t in targets}
        groups = [g for g, members in project.groups.items()
                  if any(m.removeprefix("test-") in in_sel for m in members)]
        console.print("groups: " + ", ".join(groups), highlight=False)


@app.command("render")
def render_cmd(
    check: Annotated[
        bool,
        typer.Option("--check", help="write nothing; exit 1 with a diff when the committed "
                     "generated files differ from what render would write"),
    ] = False,
    matrix: MatrixOption = None,
) -> None:
    """Regenerate docker/*.Dockerfile and docker-bake.hcl from matrix.yaml and templates/."""
    project = load(matrix)
    rendered = checked(render_mod.render, project)
    if check:
        drifts = render_mod.check(project, rendered)
        if drifts:
            for d in drifts:
                sys.stdout.write(d.diff if d.diff.endswith("\n") else d.diff + "\n")
            err_console.print(
                f"[bold red]error:[/] {len(drifts)} generated file(s) out of date: "
                + escape(", ".join(d.path for d in drifts))
                + "\n  fix: run `sagebuild render` and commit the result "
                "(generated files are never edited by hand)",
                highlight=False,
            )
            raise typer.Exit(EXIT_FAILURE)
        console.print(f"up to date: {', '.join(sorted(rendered))}", highlight=False)
        return
    changed = render_mod.write(project, rendered)
    if changed:
        console.print("wrote " + ", ".join(changed), highlight=False)
    else:
        console.print("up to date, nothing written", highlight=False)


# `build` and `test` live in commands.py (issue 4); importing it registers them on `app`.
from . import commands as _commands  # noqa: E402,F401


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except SagebuildError as err:  # raised by a command that did not catch it itself
        err_console.print(f"[bold red]error:[/] {escape(err.format())}", highlight=False)
        sys.exit(err.exit_code)


__all__ = ["app", "main", "MatrixOption", "load", "selected", "fail", "EXIT_USAGE"]


if __name__ == "__main__":
    main()

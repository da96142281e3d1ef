"""User-facing errors.

Every problem with the user's input (matrix file, command-line filters) is raised as a
:class:`SagebuildError`; the CLI prints it as ONE message and exits with :data:`EXIT_USAGE`.
Nothing is written before validation has finished, so an error never leaves half-rendered files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXIT_OK = 0
EXIT_FAILURE = 1  # e.g. `render --check` found drift, a build failed
EXIT_USAGE = 2  # bad input: matrix.yaml, command-line options, filters


@dataclass
class SagebuildError(Exception):
    """A problem with the user's input, reported as ``file:line: field: message``.

    ``allowed`` says what would have been accepted (shown on its own line).
    """

    message: str
    file: Path | str | None = None
    line: int | None = None
    field: str | None = None
    allowed: str | None = None
    exit_code: int = EXIT_USAGE

    def __post_init__(self) -> None:
        super().__init__(self.format())

    def format(self) -> str:
        where = ""
        if self.file is not None:
            where = str(self.file)
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        field = f"{self.field}: " if self.field else ""
        text = f"{where}{field}{self.message}"
        if self.allowed:
            text += f"\n  allowed: {self.allowed}"
        return text

    def __str__(self) -> str:  # dataclass would otherwise show the repr
        return self.format()

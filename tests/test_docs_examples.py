"""Every ``stylebridge ...`` example in the docs parses with the real command line, and names files that exist.

The examples are taken from README.md, docs/*.md and samples/README.md: every line of a fenced code block and
every inline code span that runs ``stylebridge`` (also after ``VAR=value``, ``.venv/bin/`` or ``&&``). Each is
split as a shell would (``#`` comments and a trailing ``&`` dropped) and given to the real parser
(:func:`bridge.cli.build_parser`): a doc that shows an option that does not exist, or forgets a required one
(``-s``), fails here instead of in a user's terminal. An inline mention in prose (```stylebridge watch --daemon
URL```, no file named) may leave out what the sentence does not discuss: its sub-command and options must
exist. Files named under the repository's own folders
(``samples/...``) must exist; placeholder names (``photo.jpg``, ``starry.jpg``) are only parsed.
Synopses (``[-s STYLE ...]``, ``<free>``) are checked for their sub-command only. The cheap first-run
example from samples/README.md is run for real, end to end, on a tiny size.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "samples" / "README.md"]
#: Folders of the repository: a path in an example that starts with one of them must exist.
REPO_FOLDERS = ("samples/", "docs/", "bench/", "tests/", "gimp_plugin/")
_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE = re.compile(r"`([^`\n]+)`")
_COMMAND = re.compile(r"(?:^|[\s;&|(])(?:[\w./-]*/)?stylebridge\s+(.*)$")
_SYNOPSIS = re.compile(r"\[|\]|\.\.\.|<[^>]*>|\|")


@dataclass(frozen=True)
class Example:
    doc: str
    line: int
    argv: tuple[str, ...]
    text: str
    fenced: bool            # a code block (a command to copy) rather than an inline span in prose

    @property
    def runnable(self) -> bool:
        """A command to copy: a code block's line, or an inline span that names a file (``samples/photo.jpg``);
        other inline spans are mentions (```watch --daemon URL```)."""
        return self.fenced or any(not a.startswith("-") and ("/" in a or re.search(r"\.\w+$", a))
                                  for a in self.argv[1:])

    @property
    def synopsis(self) -> bool:
        return bool(_SYNOPSIS.search(" ".join(self.argv)))

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: stylebridge {' '.join(self.argv)}"


def _commands(code: str) -> list[str]:
    """The ``stylebridge`` command lines in one piece of shell (split at ``&&``, ``;``, ``|``)."""
    out = []
    for part in re.split(r"&&|;|\|\|", code):
        m = _COMMAND.search(part.strip())
        if m:
            out.append(m.group(1))
    return out


def examples() -> list[Example]:
    found: list[Example] = []
    for doc in DOCS:
        fenced = False
        rel = doc.relative_to(REPO).as_posix()
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            if _FENCE.match(line):
                fenced = not fenced
                continue
            pieces = [line] if fenced else _INLINE.findall(line)
            for piece in pieces:
                for rest in _commands(piece):
                    try:
                        argv = shlex.split(rest, comments=True)
                    except ValueError:
                        continue                       # not shell (an unbalanced quote in prose)
                    if argv and argv[-1] == "&":
                        argv = argv[:-1]
                    if argv:
                        found.append(Example(rel, number, tuple(argv), rest, fenced))
    return found


EXAMPLES = examples()
_CHOICES = build_parser()._subparsers._group_actions[0].choices      # type: ignore[union-attr]
SUBCOMMANDS = set(_CHOICES)


def _subparser(name: str):  # -> argparse.ArgumentParser
    return _CHOICES[name]


def test_the_docs_have_examples_of_every_front_end() -> None:
    """The extractor finds the examples (a broken extractor would make every other test pass vacuously)."""
    commands = {e.argv[0] for e in EXAMPLES}
    assert {"stylize", "preview", "serve", "watch", "gimp-install"} <= commands, commands
    docs = {e.doc for e in EXAMPLES}
    assert {"README.md", "samples/README.md", "docs/hotfolder.md"} <= docs, docs


@pytest.mark.parametrize("example", EXAMPLES, ids=str)
def test_example_parses_with_the_real_parser(example: Example) -> None:
    first = example.argv[0]
    if first.startswith("-"):                          # stylebridge --version / --help
        argv = list(example.argv)
    else:
        assert first in SUBCOMMANDS, f"{example}: no sub-command {first!r} (there are {sorted(SUBCOMMANDS)})"
        if example.synopsis:
            return                                     # a synopsis: only its sub-command is real
        if not example.runnable:                       # a mention: every option it names exists
            known = _subparser(first)._option_string_actions
            unknown = [a for a in example.argv if a.startswith("-") and a.split("=", 1)[0] not in known]
            assert not unknown, f"{example}: no such option {unknown} for {first!r}"
            return
        argv = list(example.argv)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:                      # --help and --version exit 0; a bad example exits 2
            assert exc.code == 0, f"{example}\n{err.getvalue()}"


@pytest.mark.parametrize("example", [e for e in EXAMPLES if any(a.startswith(REPO_FOLDERS) for a in e.argv)],
                         ids=str)
def test_files_the_example_names_in_the_repository_exist(example: Example) -> None:
    for arg in example.argv:
        value = arg.split("=", 1)[-1] if arg.startswith("--") else arg
        if value.startswith(REPO_FOLDERS) and not value.endswith("/"):
            assert (REPO / value).exists(), f"{example}: {value} is not in the repository"


def test_the_first_run_example_of_the_samples_runs(tmp_path: Path, monkeypatch, capsys) -> None:
    """samples/README.md's first run, for real (cheap: 64 px, 2 iterations): exit 0 and one PNG per style."""
    [first] = [e for e in EXAMPLES if e.doc == "samples/README.md" and e.argv[0] == "stylize"]
    argv = list(first.argv)
    argv[argv.index("-o") + 1] = f"{tmp_path / 'out'}/"
    monkeypatch.chdir(REPO)
    code = main([*argv, "--preset", "draft", "--size", "64", "--iterations", "2", "--coarse-iterations", "1",
                 "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    styles = argv.count("-s")
    assert len(summary["outputs"]) == styles and all(Path(p).is_file() for p in summary["outputs"])

"""MkDocs hooks: the parts of the documentation that come from the code, written at build
time so that they cannot drift from it. A page asks for one with a marker line:

    <!-- fsx:config -->            the configuration reference, from every file in conf/
    <!-- fsx:help VERB [SUB] -->   what `fsx VERB [SUB] --help` prints
    <!-- fsx:experiments -->       the studies listed in experiments/README.md

`mkdocs build --strict` (make docs; tests/test_docs.py) fails on a marker it does not know.
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass
from pathlib import Path

MARKER = re.compile(r"^<!-- fsx:(?P<what>[a-z]+)(?P<args>[^>]*)-->\s*$", re.MULTILINE)
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.@-]*):(?P<rest>.*)$")
GROUPS = ["dataset", "detector", "backbone", "algorithm", "experiment", "hydra/launcher", "hydra/sweeper"]
VERB_FILES = ["pretrain", "adapt", "eval", "detect", "export", "acquire", "loop"]


@dataclass
class Key:
    path: str
    value: str | None  # None: a mapping or a list follows
    comment: str


@dataclass
class ConfFile:
    name: str  # as Hydra names it: base, algorithm/reptile, ...
    package: str  # where its keys land ("" = the top level)
    header: str
    keys: list[Key]


def split_comment(rest: str) -> tuple[str, str]:
    """`value  # comment` -> (value, comment), a # inside quotes kept."""
    quote = None
    for i, ch in enumerate(rest):
        if ch in "'\"":
            quote = None if quote == ch else (quote or ch)
        elif ch == "#" and quote is None and (i == 0 or rest[i - 1] in " \t"):
            return rest[:i].strip(), rest[i + 1 :].strip()
    return rest.strip(), ""


def parse(text: str, package: str = "") -> tuple[str, list[Key]]:
    """The file's leading comment and its keys (dotted paths under `package`), each with its
    value as written and its comment, continuation lines joined; `defaults` and `hydra`
    sections (Hydra's own wiring) left out."""
    header: list[str] = []
    keys: list[Key] = []
    stack: list[tuple[int, str]] = []
    started = False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            words = stripped.lstrip("#").strip()
            if not started:
                if not words.startswith("@package"):
                    header.append(words)
            elif line[0] == " " and keys and keys[-1].comment:
                keys[-1].comment += " " + words  # a comment continued under the previous one
            continue
        started = True
        found = KEY.match(line)
        if not found:
            continue  # a list item
        indent = len(found["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        value, comment = split_comment(found["rest"])
        path = ".".join([p for p in [package] if p] + [k for _, k in stack] + [found["key"]])
        if value == "":
            stack.append((indent, found["key"]))
        top = path[len(package) + 1 :] if package else path
        if top.split(".")[0] in ("defaults", "hydra") and not package.startswith("hydra"):
            continue
        if "_target_" in path.split(".")[-1]:
            continue
        keys.append(Key(path, value or None, comment))
    return " ".join(header), keys


def conf_files(conf: Path) -> list[ConfFile]:
    files = []
    for name in ["base", *VERB_FILES]:
        header, keys = parse((conf / f"{name}.yaml").read_text())
        files.append(ConfFile(name, "", header, keys))
    for group in GROUPS:
        for path in sorted((conf / group).glob("*.yaml")):
            text = path.read_text()
            declared = re.search(r"^# @package (\S+)", text, re.MULTILINE)
            package = declared.group(1) if declared else group.replace("/", ".")
            package = "" if package == "_global_" else package
            header, keys = parse(text, package)
            files.append(ConfFile(f"{group}/{path.stem}", package, header, keys))
    return files


def _cell(text: str) -> str:
    return html.escape(text, quote=False).replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def _table(keys: list[Key]) -> str:
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key in keys:
        if key.value is None and not key.comment:
            continue  # a section heading with nothing to say
        value = "" if key.value is None else f"`{key.value}`".replace("|", "\\|")
        rows.append(f"| `{key.path}` | {value} | {_cell(key.comment)} |")
    return "\n".join(rows) + "\n"


def config_reference(conf: Path) -> str:
    files = conf_files(conf)
    out = []
    base = next(f for f in files if f.name == "base")
    out += ["## Keys every verb shares (`conf/base.yaml`)", "", _cell(base.header), "", _table(base.keys)]
    out += ["## Keys of one verb (`conf/<verb>.yaml`)", ""]
    for f in files:
        if f.name in VERB_FILES:
            own = [k for k in f.keys if k.path != "command"]
            out += [f"### `fsx {f.name}`", "", _cell(f.header), ""]
            out += [_table(own) if own else "Only the shared keys and the groups below.\n"]
    for group in GROUPS:
        members = [f for f in files if f.name.startswith(group + "/")]
        options = ", ".join(f"`{f.name.split('/')[-1]}`" for f in members)
        out += [f"## `{group}=`", "", f"One of: {options} (`conf/{group}/`).", ""]
        for f in members:
            out += [f"### `{f.name}`", "", _cell(f.header) if f.header else "", ""]
            if f.keys:
                out.append(_table(f.keys))
    return "\n".join(out)


def cli_help(args: list[str]) -> str:
    from typer.testing import CliRunner

    from fsx.cli import app

    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "100", "TERMINAL_WIDTH": "100"}, prog_name="fsx", terminal_width=100)
    if result.exit_code != 0:
        raise RuntimeError(f"fsx {' '.join(args)} --help exited {result.exit_code}: {result.output}")
    return f"```text\n$ fsx {' '.join(args)} --help\n{result.output.rstrip()}\n```\n"


def experiments(root: Path) -> str:
    """The studies' table of experiments/README.md, each linked to its folder in the repository."""
    text = (root / "experiments" / "README.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| [")]
    out = ["| study | question | cost |", "|---|---|---|"]
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        name = re.match(r"\[([^\]]+)\]", cells[0]).group(1)
        out.append(f"| `experiments/{name}/` | {cells[1]} | {cells[2]} |")
    return "\n".join(out) + "\n"


def expand(markdown: str, root: Path) -> str:
    def one(match: re.Match) -> str:
        what, args = match["what"], match["args"].split()
        if what == "config":
            return config_reference(root / "conf")
        if what == "help":
            return cli_help(args)
        if what == "experiments":
            return experiments(root)
        raise ValueError(f"unknown marker <!-- fsx:{what} -->")

    return MARKER.sub(one, markdown)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - MkDocs' hook signature
    root = Path(config.config_file_path).resolve().parent
    os.environ.setdefault("FSX_PROGRESS", "plain")
    return expand(markdown, root)

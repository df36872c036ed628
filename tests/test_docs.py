"""The documentation cannot drift from the code: the site builds with `mkdocs build --strict`
(a broken link, a missing page or an unknown marker fails), its configuration reference
covers every key of conf/, and every fsx command in a code block of the README or the docs
is checked the way fsx checks a command line before it runs (keys, group options, value
types and ranges for the config verbs; options and arguments for the others)."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
CONFIG_VERBS = {"pretrain", "adapt", "eval", "detect", "export", "acquire", "loop"}
FENCE = re.compile(r"^```(?P<lang>\w*)\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)


def _hooks():
    spec = importlib.util.spec_from_file_location("fsx_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `fsx`) of every fsx command line in a non-Python code block."""
    drop_comment = _hooks().split_comment  # the reference's own `value  # comment` splitter
    found = []
    for page in _pages():
        for block in FENCE.finditer(page.read_text()):
            if block["lang"] in ("python", "text", "yaml"):
                continue
            body = re.sub(r"\\\n\s*", " ", block["body"])  # continued lines
            for line in body.splitlines():
                line = line.strip().removeprefix("$ ")
                for part in line.split("&&"):
                    if not part.strip().startswith("fsx "):
                        continue
                    words = shlex.split(re.sub(r"<[^<>]*>", "X", drop_comment(part.strip())[0]))  # placeholders: <id>, <file>
                    if len(words) < 2 or words[0] != "fsx" or words[1].endswith(":") or words[1].startswith("-"):
                        continue  # not a command, or fsx's own output ("fsx detect: MLflow run ...")
                    found.append((f"{page.relative_to(ROOT)}: {part.strip()}", [w for w in words[1:] if w != "..."]))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_commands_of_every_verb():
    verbs = {argv[0] for _, argv in COMMANDS}
    assert CONFIG_VERBS | {"compare", "report", "runs", "data"} <= verbs, sorted(verbs)


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_a_documented_command_is_one_fsx_accepts(where, argv, monkeypatch):
    verb, args = argv[0], argv[1:]
    if verb in CONFIG_VERBS:
        import fsx.run.checks
        from fsx.run.overrides import validate

        # the checks that need the documented placeholders to exist (runs:/<id>, ~/data/cards) are left out
        monkeypatch.setattr(fsx.run.checks, "precheck", lambda verb, cfg: None)
        multirun = any(a in ("-m", "--multirun") for a in args)
        overrides = [a for a in args if a not in ("-m", "--multirun", "--cfg", "job", "--info")]
        validate(verb, overrides, multirun=multirun)
        return
    from fsx.cli import app

    command = typer.main.get_command(app)
    context = click.Context(command, info_name="fsx")
    words = list(argv)
    while isinstance(command, click.Group):  # fsx runs sweep, fsx data stats, ...
        name = words.pop(0)
        command = command.get_command(context, name)
        assert command is not None, f"{where}: fsx has no command {name!r}"
    command.make_context(argv[0], words)  # unknown options and missing arguments raise here


def test_the_configuration_reference_names_every_key_of_conf():
    from omegaconf import OmegaConf

    hooks = _hooks()
    files = {f.name: f for f in hooks.conf_files(ROOT / "conf")}
    reference = hooks.config_reference(ROOT / "conf")

    def leaves(node, prefix=""):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if OmegaConf.is_dict(value) and len(value):
                yield from leaves(value, path + ".")
            else:
                yield path

    base = OmegaConf.load(ROOT / "conf" / "base.yaml")
    for key in leaves(base):
        if key.split(".")[0] in ("hydra", "defaults"):
            continue
        assert f"`{key}`" in reference, key
    reptile = {k.path: k for k in files["algorithm/reptile"].keys}
    assert reptile["algorithm.inner_steps"].value == "10"
    assert reptile["algorithm.inner_state"].comment.startswith("reset: a fresh inner Adam per task | carry:")
    assert "persist across tasks and meta-iterations" in reptile["algorithm.inner_state"].comment  # continuation lines joined
    assert files["experiment/demo"].package == ""  # a preset's keys are global
    assert "`train.steps`" in reference and "`hydra.sweeper.n_trials`" in reference


def test_the_site_builds_strict(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    configuration = (tmp_path / "site" / "configuration" / "index.html").read_text()
    assert "inner_state" in configuration and "eval.milestones" in configuration
    pretrain = (tmp_path / "site" / "verbs" / "pretrain" / "index.html").read_text()
    assert "fsx pretrain --help" in pretrain


def test_an_unknown_marker_fails_the_build():
    with pytest.raises(ValueError, match="unknown marker"):
        _hooks().expand("<!-- fsx:nonsense -->\n", ROOT)

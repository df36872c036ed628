"""Hydra overrides checked before anything runs, for the CLI and the Python API alike: every
job's config is composed, so an unknown key, group option, value type or range is one
UsageError (exit 2 on the command line) instead of a failure mid-sweep."""

from __future__ import annotations

from fsx.errors import UsageError

CONFIG_MODULE = "fsx.conf"


def job_overrides(overrides: list[str]) -> list[list[str]]:
    """Every job's override list, as Hydra's basic sweeper will make them (for validation)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [job for batch in batches for job in batch]


def validate(verb: str, overrides: list[str], multirun: bool) -> int:
    """Compose the config of every job before anything runs, so that an unknown key, group
    option or value type exits 2 with one message instead of failing mid-sweep.
    Returns the number of jobs (1 for a single run)."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    try:
        jobs = job_overrides(overrides) if multirun else [overrides]
    except OverrideParseException as e:
        raise UsageError(f"cannot parse the overrides {' '.join(overrides)}: {e}")
    except Exception:  # noqa: BLE001 - sweeper-specific syntax (ranges, intervals): Hydra validates it
        return 0
    wrong: list[str] = []
    checks: list = []
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            from omegaconf import OmegaConf

            groups = set(compose(config_name=verb, return_hydra_config=True).hydra.runtime.choices)
            known = set(known_keys(verb))
            for job in jobs[:200]:
                for appended in (o for o in job if o.startswith("+")):
                    key = appended.lstrip("+").split("=", 1)[0].split("@", 1)[0]
                    if key not in known:  # fsx would run with the key silently unread
                        raise UsageError(f"bad configuration for `fsx {verb} {' '.join(overrides)}`: {unknown_key(key, verb, known)}")
                cfg = compose(config_name=verb, overrides=list(job))
                # resolve interpolations now: a bad ${...} is a usage error too
                chosen = OmegaConf.to_container(cfg, resolve=True)
                # a value must keep its default's type (train.steps=abc is not a step count)
                selections = [o for o in job if o.split("=", 1)[0].split("@", 1)[0].lstrip("+~") in groups]
                reference = OmegaConf.to_container(compose(config_name=verb, overrides=selections), resolve=True)
                wrong += [w for w in type_errors(reference, chosen) if w not in wrong]
                if not wrong:
                    checks.append(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        message = " ".join(" ".join(str(part).split()) for part in (e, e.__cause__ or "") if str(part).strip())
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            explained = explain(message, verb)
        raise UsageError(f"bad configuration for `fsx {verb} {' '.join(overrides)}`: {explained}")
    if wrong:
        raise UsageError(f"bad value for `fsx {verb} {' '.join(overrides)}`: {'; '.join(wrong)} (run `fsx {verb} --cfg job` to see every key)")
    from fsx.run.checks import precheck

    for cfg in checks:  # ranges and checkpoint references, before Hydra creates anything or torch is imported
        precheck(verb, cfg)
    return len(jobs)


def explain(message: str, verb: str) -> str:
    """Hydra's message in fsx's words: for an unknown key the nearest keys fsx really reads
    (never Hydra's advice to append it with `+`, which would train with the key ignored);
    for an unknown group option the options; no search paths or OmegaConf internals."""
    import difflib
    import re

    unknown = re.search(r"Could not (?:override|append to) '([^']+)'", message) or re.search(r"full_key: (\S+)", message)
    if unknown and ("not in struct" in message or "Could not override" in message or "Could not append" in message):
        return unknown_key(unknown.group(1), verb, known_keys(verb))
    missing = re.search(r"Could not find '([^/']+)/([^']+)'.*?Available options in '[^']+':(.*?)(?:Config search path|$)", message)
    if missing:
        group, option, options = missing.group(1), missing.group(2), missing.group(3).split()
        near = difflib.get_close_matches(option, options, n=1, cutoff=0.5)
        return f"{group}={option} does not exist; choose one of {', '.join(options)}" + (f" (did you mean {group}={near[0]}?)" if near else "")
    message = re.sub(r"\s*Config search path:.*$", "", message)
    return re.sub(r"\s*full_key: \S+( reference_type=\S+)? object_type=\S+", "", message)


def unknown_key(key: str, verb: str, known) -> str:
    import difflib

    near = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(near)}? " if near else ""
    return f"fsx has no key {key}: {hint}(`fsx {verb} --cfg job` lists every key)"


def known_keys(verb: str) -> list[str]:
    """Every dotted key of the verb's default config, and its group names."""
    from hydra import compose
    from omegaconf import OmegaConf

    cfg = compose(config_name=verb, return_hydra_config=True)
    groups = [g for g in cfg.hydra.runtime.choices if not g.startswith("hydra")]
    tree = OmegaConf.to_container(cfg, resolve=False)
    tree.pop("hydra", None)

    def walk(node, prefix: str = "") -> list[str]:
        keys = []
        for key, value in node.items():
            keys.append(prefix + str(key))
            if isinstance(value, dict):
                keys += walk(value, f"{prefix}{key}.")
        return keys

    return groups + walk(tree)


KINDS = ((bool, "true or false"), (int, "an integer"), (float, "a number"), (list, "a list"), (dict, "a mapping"))


# keys that take a number or a mapping (checked by their verb: fsx.run.checks)
NUMBER_OR_MAPPING = ("loop.steps",)


def type_errors(reference: dict, chosen: dict, prefix: str = "") -> list[str]:
    """Keys whose chosen value has another type than their default (null is not checked)."""
    errors: list[str] = []
    for key, default in reference.items():
        value, name = chosen.get(key), f"{prefix}{key}"
        if default is None or value is None or name in NUMBER_OR_MAPPING:
            continue
        if isinstance(default, dict) and isinstance(value, dict):
            errors += type_errors(default, value, name + ".")
            continue
        for kind, words in KINDS:
            if isinstance(default, kind):
                fits = (isinstance(value, kind) and not (kind is int and isinstance(value, bool))) or (kind is float and isinstance(value, int) and not isinstance(value, bool))
                if not fits:
                    errors.append(f"{name}={value!r} should be {words} (default {default!r})")
                break
    return errors

"""`fsx runs sweep`: where a sweep stands, from the MLflow store alone (its launcher may have
run elsewhere, and may be gone): each job's status, duration, the overrides that set it apart
and, for a failed job, its error."""

from __future__ import annotations

import re
from pathlib import Path

from fsx import tracking
from fsx.errors import UsageError
from fsx.run.sweep import SKIPPED_FILE, failures

_BEFORE_AN_OVERRIDE = re.compile(r"\s+(?=~|\+{0,2}[\w.@/-]+=)")  # split "a=1 b=[1, 2]" between overrides only
_SKIPPED = re.compile(r"^job (\d+) \((.*)\): identical to FINISHED run ([0-9a-f]+)")  # fsx.run.sweep.record_skip's lines


def split_overrides(text: str) -> list[str]:
    return [o for o in _BEFORE_AN_OVERRIDE.split(text.strip()) if o]


def _took(run: dict) -> str:
    if not run.get("start_ms") or not run.get("end_ms"):
        return "-"
    seconds = max(0, (run["end_ms"] - run["start_ms"]) // 1000)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def _state(run: dict) -> str:
    if run["status"] != "RUNNING":
        return run["status"]
    alive = tracking.process_alive(run["tags"])
    return "RUNNING" if alive is not False else "RUNNING?"  # its process is gone: fsx runs clean


def sweep_status(tracking_uri: str, experiment: str, parent: str | None = None, width: int = 100) -> str:
    """The sweep `parent` (default: the experiment's newest) as a header and one row per job."""
    if parent is None:
        parents = tracking.search_runs(tracking_uri, experiment, "tags.`fsx.multirun` = 'parent'")
        if not parents:
            raise UsageError(f"no sweep (fsx ... -m) in experiment '{experiment}' at {tracking_uri}")
        parent_run = parents[-1]
    else:
        status, tags = tracking.run_state(tracking_uri, parent)
        if tags.get("fsx.multirun") != "parent":
            raise UsageError(f"run {parent} is not the parent run of a sweep (fsx ... -m); give a parent's id or leave it out for the newest")
        parent_run = {"id": parent, "status": status, "tags": tags}
    jobs = tracking.search_runs(tracking_uri, experiment, parent_run_id=parent_run["id"])
    tags = parent_run["tags"]
    skipped = failures(Path(tags["fsx.sweep_dir"]), SKIPPED_FILE) if tags.get("fsx.sweep_dir") else []
    for line in skipped:  # a job skipped by a rerun has no run of its own: its row points at the twin that finished
        found = _SKIPPED.match(line)
        if found:
            job, overrides, twin = found.groups()
            jobs.append({"id": twin, "status": "SKIPPED", "tags": {"fsx.job": job, "fsx.overrides": overrides}})
    jobs.sort(key=lambda r: (int(r["tags"].get("fsx.job", 10**9)), r.get("start_ms") or 0))

    split = {r["id"]: split_overrides(r["tags"].get("fsx.overrides", "")) for r in jobs}
    common = set.intersection(*(set(o) for o in split.values())) if len(split) > 1 else set()
    states = [_state(r) for r in jobs]  # once each: a RUNNING run asks whether its process lives
    counts = {s: states.count(s) for s in ("FINISHED", "SKIPPED", "FAILED", "KILLED", "RUNNING", "RUNNING?")}
    lines = [
        f"sweep {parent_run['id']} ({tags.get('fsx.command', '?')}; parent {parent_run['status']}): {tags.get('fsx.sweep', '')}",
        f"  directory: {tags.get('fsx.sweep_dir', '?')}",
    ]
    if common:
        lines.append(f"  every job: {' '.join(o for o in split[jobs[0]['id']] if o in common)}")
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines.append(f"  {len(jobs)} job(s): {summary or 'none recorded yet'}")
    if counts["SKIPPED"]:
        lines.append("  SKIPPED: a rerun found a FINISHED run of the same config (its id is the row's run); skip_finished=false runs it again")
    if counts["RUNNING?"]:
        lines.append("  RUNNING?: its process on this host is gone; `fsx runs clean` marks it KILLED, and a rerun of the sweep resumes it")
    lines += ["", f"{'job':>4}  {'status':<9} {'took':>7}  {'run':<8}  overrides / error"]
    for run, state in zip(jobs, states):
        own = " ".join(o for o in split[run["id"]] if o not in common) or "-"
        lines.append(f"{run['tags'].get('fsx.job', '-'):>4}  {state:<9} {_took(run):>7}  {run['id'][:8]:<8}  {own}")
        if run["status"] != "FINISHED" and run["tags"].get("fsx.error"):
            error = run["tags"]["fsx.error"].splitlines()[0]
            lines.append(f"{'':>35}{error if len(error) <= width else error[: width - 3] + '...'}")
    return "\n".join(lines)

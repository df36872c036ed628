"""Everything fsx records goes through here: the only module that imports mlflow.

A run is opened with `open_run`; a multirun's parent run with `create_parent_run`. A
checkpoint reference (`runs:/<id>[/path]`, `latest`, or a file) becomes a local file with
`resolve_checkpoint`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator

from fsx.errors import UsageError
from fsx.locking import file_lock

CHECKPOINT_ARTIFACT = "checkpoints/model.pt"

for _name in ("mlflow", "alembic", "mlflow.store.db.utils"):
    logging.getLogger(_name).setLevel(logging.WARNING)
logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # fsx says it once, in its own words
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# A tracking server that stops answering costs seconds per call, not MLflow's four minutes of
# backoff: metrics wait in memory (below) and anything else fails the run cleanly.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

RETRY_AFTER_SECONDS = 60  # after a failed metrics write, keep metrics in memory this long


class StoreError(Exception):
    """The tracking store stopped answering in the middle of a run (exit code 1)."""


def _mlflow():
    import mlflow

    return mlflow


_OPENED: set[str] = set()


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    if tracking_uri in _OPENED:
        return MlflowClient(tracking_uri=tracking_uri)
    check_store(tracking_uri)
    with _store_lock(tracking_uri):  # opening a new database creates and migrates it
        try:
            client = MlflowClient(tracking_uri=tracking_uri)
            client.search_experiments(max_results=1)
        except Exception as e:  # noqa: BLE001 - unreachable server, unwritable db, bad URI
            raise UsageError(f"mlflow.tracking_uri={tracking_uri} cannot be opened: {e}") from None
    _OPENED.add(tracking_uri)
    return client


SERVER_HINT = "start one with `mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000`, or use the default local store (mlflow.tracking_uri=sqlite:///mlflow.db)"


def check_store(tracking_uri: str, timeout: float = 5.0) -> None:
    """Fail fast, with the reason, on a store MLflow would retry for minutes: a server that
    does not answer, a SQLite file that cannot be created or written, a file that is not a
    database. Touches nothing: a bad file is left as it is."""
    import socket
    import sqlite3
    from urllib.parse import urlparse

    parsed = urlparse(tracking_uri)
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname or "localhost", port), timeout=timeout).close()
        except OSError as e:
            raise UsageError(f"mlflow.tracking_uri={tracking_uri}: no MLflow server answers there ({e.strerror or e}); {SERVER_HINT}") from None
        return
    if not tracking_uri.startswith("sqlite:///"):
        return
    database = Path(tracking_uri[len("sqlite:///") :].split("?", 1)[0])
    if str(database) in ("", ":memory:"):
        return
    if database.is_dir():
        raise UsageError(f"mlflow.tracking_uri={tracking_uri}: {database} is a folder, not a database file")
    if database.exists():
        try:
            with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=timeout)) as db:
                db.execute("select count(*) from sqlite_master").fetchone()
        except sqlite3.DatabaseError as e:
            raise UsageError(
                f"mlflow.tracking_uri={tracking_uri}: {database} is not an MLflow database ({e}); it was left untouched: "
                "move it away or point mlflow.tracking_uri at another file"
            ) from None
        if not os.access(database, os.W_OK):
            raise UsageError(f"mlflow.tracking_uri={tracking_uri}: {database} is not writable by this user")
        return
    folder = database.parent if str(database.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"mlflow.tracking_uri={tracking_uri}: the folder {folder} does not exist")
    try:  # os.access says yes to root everywhere, /proc included: really create the file
        fd, probe = tempfile.mkstemp(prefix=".fsx-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"mlflow.tracking_uri={tracking_uri}: cannot create the database {database} ({e.strerror or e})") from None


@contextlib.contextmanager
def _store_lock(tracking_uri: str) -> Iterator[None]:
    """One process at a time creates or migrates a SQLite store and its experiments: MLflow
    runs its schema migrations when it first opens a new file, and two processes doing that
    at once (a parallel sweep's first jobs) crash each other. Other stores need no lock."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    database = Path(os.path.abspath(tracking_uri[len("sqlite:///") :]))
    with file_lock(database.with_name(f".{database.name}.lock")):  # beside it, gone afterwards
        yield


def _experiment_id(tracking_uri: str, experiment: str) -> str:
    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri)
    client = _client(tracking_uri)
    with _store_lock(tracking_uri):  # two processes must not both create the experiment
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return found.experiment_id
        return client.create_experiment(experiment)


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


class Run:
    """A thin handle on one open MLflow run.

    Metrics survive a store that stops answering for a while: they wait in memory and go out
    with the next write that succeeds (the run's final `flush` included). Every other write
    that fails raises StoreError naming the store."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri, self.id = tracking_uri, run_id
        self._client = _client(tracking_uri)
        self._pending: list = []  # metrics not yet written
        self._quiet_until = 0.0

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - MlflowException, connection errors, disk errors
            raise StoreError(f"the MLflow store at {self.tracking_uri} failed while {what} for run {self.id} ({type(e).__name__}: {str(e)[:120]}...)") from None

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            self._call("logging params", self._client.log_batch, self.id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        if time.monotonic() >= self._quiet_until:
            self.flush(strict=False)

    def flush(self, strict: bool = True) -> None:
        """Write the metrics waiting in memory. strict: raise StoreError if the store still
        fails; otherwise keep them and retry after RETRY_AFTER_SECONDS."""
        import sys
        import time

        while self._pending:
            batch = self._pending[:500]
            try:
                self._client.log_batch(self.id, metrics=batch)
            except Exception as e:  # noqa: BLE001
                if strict:
                    raise StoreError(f"the MLflow store at {self.tracking_uri} does not answer; {len(self._pending)} metric values of run {self.id} were not recorded ({type(e).__name__})") from None
                if not self._quiet_until:
                    print(f"\nwarning: the MLflow store at {self.tracking_uri} does not answer; metrics wait in memory and go out when it does", file=sys.stderr, flush=True)
                self._quiet_until = time.monotonic() + RETRY_AFTER_SECONDS
                return
            del self._pending[: len(batch)]
            self._quiet_until = 0.0

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self._call("setting tags", self._client.set_tag, self.id, k, str(v))

    def log_dict(self, obj: dict, artifact_file: str) -> None:
        self._call(f"writing {artifact_file}", self._client.log_dict, self.id, obj, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call(f"writing {artifact_file}", self._client.log_text, self.id, text, artifact_file)

    def log_file(self, local_path: Path | str, artifact_path: str | None = None) -> None:
        self._call(f"storing {Path(local_path).name}", self._client.log_artifact, self.id, str(local_path), artifact_path)


def _process_tags() -> dict[str, str]:
    """Which process a run belongs to, so a RUNNING run whose process died can be told apart."""
    import socket

    return {"fsx.host": socket.gethostname(), "fsx.pid": str(os.getpid())}


def process_alive(tags: dict[str, str]) -> bool | None:
    """Whether the process that opened a run still lives (None: another host, or not recorded)."""
    import socket

    if tags.get("fsx.host") != socket.gethostname() or not tags.get("fsx.pid", "").isdigit():
        return None
    try:
        os.kill(int(tags["fsx.pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def open_run(tracking_uri: str, experiment: str, run_name: str, tags: dict[str, str], parent_run_id: str | None = None, resume_run_id: str | None = None) -> Iterator[Run]:
    """A new run (or the interrupted run `resume_run_id`, running again), ended FINISHED on
    success, FAILED on error, KILLED on Ctrl-C or SIGTERM."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    experiment_id = _experiment_id(tracking_uri, experiment)
    client = _client(tracking_uri)
    if resume_run_id:
        client.update_run(resume_run_id, status="RUNNING")
        with contextlib.suppress(Exception):  # the error that stopped it is history now
            client.delete_tag(resume_run_id, "fsx.error")
        run = Run(tracking_uri, resume_run_id)
        run.set_tags({**{k: str(v) for k, v in tags.items()}, **_process_tags()})
    else:
        all_tags = {MLFLOW_RUN_NAME: run_name, **{k: str(v) for k, v in tags.items()}, **_process_tags()}
        if parent_run_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        created = client.create_run(experiment_id, tags=all_tags, run_name=run_name)
        run = Run(tracking_uri, created.info.run_id)
    try:
        yield run
        run.flush()
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            run.flush(strict=False)
            client.set_terminated(run.id, "KILLED")
        raise
    except BaseException:
        with contextlib.suppress(Exception):  # a store that is gone cannot record the failure
            run.flush(strict=False)
            client.set_terminated(run.id, "FAILED")
        raise
    else:
        run._call("ending the run", client.set_terminated, run.id, "FINISHED")


def create_parent_run(tracking_uri: str, experiment: str, run_name: str, tags: dict[str, str]) -> str:
    experiment_id = _experiment_id(tracking_uri, experiment)
    run = _client(tracking_uri).create_run(experiment_id, tags={**{k: str(v) for k, v in tags.items()}, **_process_tags()}, run_name=run_name)
    return run.info.run_id


def record_failed_run(tracking_uri: str, experiment: str, run_name: str, tags: dict[str, str], parent_run_id: str, params: dict[str, str]) -> str:
    """A run that is FAILED from the start: a sweep's job that stopped before its own run
    opened, with what it was asked (`params`) and why it stopped (in `tags`)."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    client = _client(tracking_uri)
    all_tags = {MLFLOW_RUN_NAME: run_name, MLFLOW_PARENT_RUN_ID: parent_run_id, **{k: str(v) for k, v in tags.items()}, **_process_tags()}
    run = client.create_run(_experiment_id(tracking_uri, experiment), tags=all_tags, run_name=run_name)
    for key, value in params.items():  # one by one: MLflow refuses a whole batch for one key it cannot take (`group@pkg`)
        with contextlib.suppress(Exception):  # that override is still in fsx.overrides
            client.log_param(run.info.run_id, key, str(value)[:6000])
    client.set_terminated(run.info.run_id, "FAILED")
    return run.info.run_id


def child_runs(tracking_uri: str, parent_run_id: str) -> list[dict]:
    """[{id, name, status}] of a multirun's jobs, oldest first."""
    client = _client(tracking_uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=10000,
    )
    return [{"id": r.info.run_id, "name": r.info.run_name, "status": r.info.status, "error": r.data.tags.get("fsx.error"), "params": dict(r.data.params)} for r in runs]


def set_run_tags(tracking_uri: str, run_id: str, tags: dict[str, str]) -> None:
    """Tag a run that is not this process's open run (a sweep's parent, after its jobs)."""
    client = _client(tracking_uri)
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def finish_parent_run(tracking_uri: str, parent_run_id: str, failed: bool = False) -> list[dict]:
    """End a multirun's parent run (FAILED if `failed` or any child failed); return its children."""
    children = child_runs(tracking_uri, parent_run_id)
    client = _client(tracking_uri)
    if client.get_run(parent_run_id).info.status == "RUNNING":
        failed = failed or any(c["status"] != "FINISHED" for c in children)
        client.set_terminated(parent_run_id, "FAILED" if failed else "FINISHED")
    return children


def latest_run_id(tracking_uri: str, experiment: str, command: str = "pretrain", algorithm: str | None = None, key: str = "checkpoint") -> str:
    """The newest finished run of `command` (and of `algorithm`, when given) in the experiment."""
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = []
    wanted = f"tags.`fsx.command` = '{command}' and attributes.status = 'FINISHED'"
    if algorithm:
        wanted += f" and tags.`fsx.algorithm` = '{algorithm}'"
    if exp is not None:
        runs = client.search_runs([exp.experiment_id], filter_string=wanted, order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        name = "latest" if (command, algorithm) == ("pretrain", None) else ":".join(["latest", command] + ([algorithm] if algorithm else []))
        what = f"'{command}' run" + (f" of algorithm {algorithm}" if algorithm else "")
        raise UsageError(f"{key}={name}: no finished {what} in experiment '{experiment}' at {tracking_uri}")
    return runs[0].info.run_id


def resolve_checkpoint(reference: str, tracking_uri: str, experiment: str, key: str = "checkpoint") -> tuple[Path, str | None]:
    """A local checkpoint file for `reference`, and the run id it came from (None for a file).
    `key` is the config key the reference was given as (checkpoint, init), for the messages.

    reference: `runs:/<run_id>` (its checkpoints/model.pt), `runs:/<run_id>/<artifact path>`,
    `latest` (the newest finished pretrain run of the experiment), `latest:<command>`,
    `latest:<command>:<algorithm>` (e.g. latest:pretrain:reptile), or a file path.
    """
    if reference in (None, "", "None"):
        raise UsageError("this command needs a checkpoint: add checkpoint=runs:/<run_id>, checkpoint=latest or checkpoint=<file.pt>")
    reference = str(reference)
    if reference == "latest" or reference.startswith("latest:"):
        _, command, algorithm = (reference.split(":", 2) + ["", ""])[:3]
        reference = f"runs:/{latest_run_id(tracking_uri, experiment, command or 'pretrain', algorithm or None, key)}"
    if not reference.startswith("runs:/"):
        path = Path(reference).expanduser()
        if not path.is_file():
            raise UsageError(f"{key}={reference}: no such file (use runs:/<run_id> for an MLflow run)")
        return path, None
    rest = reference[len("runs:/") :].strip("/")
    run_id, _, artifact = rest.partition("/")
    artifact = artifact or CHECKPOINT_ARTIFACT
    client = _client(tracking_uri)
    try:
        client.get_run(run_id)
    except Exception:  # noqa: BLE001 - mlflow raises MlflowException for unknown ids
        raise UsageError(f"{key}={reference}: no run '{run_id}' in the MLflow store at {tracking_uri}") from None
    # Artifacts never change once logged: keep one local copy per run and artifact.
    final = Path(os.environ.get("FSX_CACHE", "~/.cache/fsx")).expanduser() / "checkpoints" / run_id / artifact
    if final.is_file():
        return final, run_id
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=final.parent) as tmp:
        try:
            local = client.download_artifacts(run_id, artifact, tmp)
        except Exception as e:  # noqa: BLE001
            raise UsageError(f"{key}={reference}: run '{run_id}' has no artifact '{artifact}' ({e})") from None
        os.replace(local, final)
    return final, run_id


def newest_runs_by_tag(tracking_uri: str, experiment: str, command: str, tag: str) -> dict[str, str]:
    """{tag value: run id} of the newest finished run of `command` for each value of `tag`
    (e.g. the newest eval run of each algorithm)."""
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise UsageError(f"no experiment '{experiment}' at {tracking_uri}")
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`fsx.command` = '{command}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=10000,
    )
    newest: dict[str, str] = {}
    for run in runs:
        if tag in run.data.tags:  # a sweep's parent run has no algorithm of its own
            newest.setdefault(run.data.tags[tag], run.info.run_id)
    return newest


def artifact_text(tracking_uri: str, run_id: str, path: str) -> str:
    """The text of one artifact of a run."""
    with tempfile.TemporaryDirectory() as tmp:
        return Path(_client(tracking_uri).download_artifacts(run_id, path, tmp)).read_text()


def run_record(tracking_uri: str, run_id: str) -> dict:
    """{params, metrics (latest values), tags} of one run."""
    run = _client(tracking_uri).get_run(run_id)
    return {"params": dict(run.data.params), "metrics": dict(run.data.metrics), "tags": dict(run.data.tags)}


def run_state(tracking_uri: str, run_id: str) -> tuple[str, dict[str, str]]:
    """(status, tags) of one run; a clear error for an unknown id."""
    try:
        run = _client(tracking_uri).get_run(run_id)
    except Exception:  # noqa: BLE001 - MlflowException for unknown ids
        raise UsageError(f"no run '{run_id}' in the MLflow store at {tracking_uri}") from None
    return run.info.status, dict(run.data.tags)


def unfinished_runs(tracking_uri: str, experiment: str | None = None, command: str | None = None) -> list[dict]:
    """[{id, name, status, experiment, tags}] of the runs not FINISHED, newest first: in one
    experiment or all, of one command or any."""
    client = _client(tracking_uri)
    if experiment is None:
        ids = [e.experiment_id for e in client.search_experiments()]
    else:
        found = client.get_experiment_by_name(experiment)
        ids = [found.experiment_id] if found else []
    wanted = "attributes.status != 'FINISHED'" + (f" and tags.`fsx.command` = '{command}'" if command else "")
    runs = client.search_runs(ids, filter_string=wanted, order_by=["attributes.start_time DESC"], max_results=10000) if ids else []
    names = {e: client.get_experiment(e).name for e in {r.info.experiment_id for r in runs}}
    return [{"id": r.info.run_id, "name": r.info.run_name, "status": r.info.status, "experiment": names[r.info.experiment_id], "tags": dict(r.data.tags)} for r in runs]


def mark_killed(tracking_uri: str, run_id: str) -> None:
    _client(tracking_uri).set_terminated(run_id, "KILLED")


def search_runs(tracking_uri: str, experiment: str, filter_string: str = "", parent_run_id: str | None = None) -> list[dict]:
    """[{id, name, status, experiment, tags, params}] of the runs matching an MLflow filter string, oldest
    first: in the experiment, or, with `parent_run_id`, among that run's children (in the
    parent's experiment). Unknown experiments, parents and bad filters are usage errors."""
    client = _client(tracking_uri)
    if parent_run_id:
        try:
            experiment_id = client.get_run(parent_run_id).info.experiment_id
        except Exception:  # noqa: BLE001 - MlflowException for unknown ids
            raise UsageError(f"--parent {parent_run_id}: no run with that id in the MLflow store at {tracking_uri}") from None
        filter_string = " and ".join(f for f in (f"tags.`mlflow.parentRunId` = '{parent_run_id}'", filter_string) if f)
    else:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise UsageError(f"--experiment {experiment}: no such experiment in the MLflow store at {tracking_uri}")
        experiment_id = found.experiment_id
    try:
        runs = client.search_runs([experiment_id], filter_string=filter_string, order_by=["attributes.start_time ASC"], max_results=50000)
    except Exception as e:  # noqa: BLE001 - MlflowException: a filter MLflow cannot parse
        raise UsageError(f"--filter: MLflow cannot use the filter string {filter_string!r}: {str(e).splitlines()[0]}") from None
    names = {e: client.get_experiment(e).name for e in {r.info.experiment_id for r in runs}}
    return [
        {"id": r.info.run_id, "name": r.info.run_name, "status": r.info.status, "experiment": names[r.info.experiment_id], "tags": dict(r.data.tags), "params": dict(r.data.params),
         "start_ms": r.info.start_time, "end_ms": r.info.end_time}
        for r in runs
    ]

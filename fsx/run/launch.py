"""`trainer.devices=N`: the pretrain command started again as N processes under torchrun."""

from __future__ import annotations

import signal
import subprocess
import sys

from fsx.errors import UsageError


def launch(devices: int) -> dict:
    """trainer.devices=N: this same command again as N processes under torchrun (one per GPU,
    or N CPU processes), which train one model; returns when they have all finished."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hc = HydraConfig.get()
    except ValueError:
        raise UsageError(f"trainer.devices={devices} starts processes from the command line (fsx pretrain trainer.devices={devices} ...); from Python, start torchrun yourself") from None
    if hc.mode == RunMode.MULTIRUN:
        raise UsageError(f"trainer.devices={devices} trains one configuration at a time, not the jobs of a multirun (-m): run the configurations one by one")
    flags = [f"--config-dir={s.path}" for s in hc.runtime.config_sources if s.provider == "command-line" and s.schema == "file"]
    flags += [f"--config-name={hc.job.config_name}"] if hc.job.config_name != "pretrain" else []
    hydra_overrides = [o for o in hc.overrides.hydra if not o.startswith("hydra.mode=")]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}", "-m", "fsx", "pretrain", *flags, *hc.overrides.task, *hydra_overrides]
    print(f"fsx pretrain: trainer.devices={devices}: {' '.join(command)}", flush=True)
    process = subprocess.Popen(command)
    try:
        code = process.wait()
    except BaseException:  # Ctrl-C or SIGTERM: torchrun hands it on to the processes, which save last.pt
        process.send_signal(signal.SIGTERM)
        process.wait()
        raise
    if code:
        raise SystemExit(code)  # the processes have said why
    return {"run_id": None, "processes": devices}

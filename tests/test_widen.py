"""facekit.training.widen: a wider model started from a narrower one computes the same embedding, and can learn."""

from __future__ import annotations

import pytest
import torch

from facekit.model import build_model
from facekit.training.widen import widen


def _trained_looking(width: float) -> torch.nn.Module:
    """A small model whose BatchNorm statistics and affine terms are not the identity, as after training."""
    torch.manual_seed(0)
    model = build_model(width=width, blocks=(2, 2, 2), embedding_size=64, dropout=0.0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("wider", [0.5, 0.375])
def test_wider_model_computes_the_same_embedding(wider):
    narrow = _trained_looking(0.25)
    wide = build_model(width=wider, blocks=(2, 2, 2), embedding_size=64, dropout=0.0)
    widen(narrow, wide)
    assert sum(p.numel() for p in wide.parameters()) > 1.5 * sum(p.numel() for p in narrow.parameters())
    x = torch.randn(6, 3, 112, 112)
    for mode in ("eval", "train"):  # running statistics, then the batch's own
        narrow.train(mode == "train")
        wide.train(mode == "train")
        with torch.no_grad():
            torch.testing.assert_close(wide(x), narrow(x), atol=1e-5, rtol=0)


def test_new_channels_are_read_with_zero_weights_that_learn():
    narrow = _trained_looking(0.25)
    wide = build_model(width=0.5, blocks=(2, 2, 2), embedding_size=64, dropout=0.0)
    widen(narrow, wide)
    old_features = narrow.embedding.in_features
    unread = wide.embedding.weight[:, old_features:]
    assert unread.abs().sum() == 0 and wide.embedding.weight[:, :old_features].abs().sum() > 0
    wide(torch.randn(4, 3, 112, 112)).sum().backward()
    assert wide.embedding.weight.grad[:, old_features:].abs().sum() > 0


def test_only_the_width_may_grow():
    narrow = _trained_looking(0.25)
    with pytest.raises(ValueError, match="narrow"):
        widen(narrow, build_model(width=0.125, blocks=(2, 2, 2), embedding_size=64, dropout=0.0))
    with pytest.raises(ValueError, match="only the width"):
        widen(narrow, build_model(width=0.5, blocks=(2, 2, 3), embedding_size=64, dropout=0.0))

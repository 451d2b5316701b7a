"""Losses: one combined-margin softmax (ArcFace / CosFace), batch triplet, and distillation (two kinds)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CombinedMarginLoss(nn.Module):
    """logit of the true class = s * (cos(m1 * theta + m2) - m3).

    (m1, m2, m3) = (1, 0.5, 0) is ArcFace, (1, 0, 0.35) is CosFace. The class centres live
    here, so the loss owns its (num_classes x embedding) weight.
    """

    def __init__(self, embedding_size: int, num_classes: int, s: float = 32.0, m1: float = 1.0,
                 m2: float = 0.3, m3: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, embedding_size) * 0.01)
        self.s, self.m1, self.m2, self.m3 = s, m1, m2, m3

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, margin_scale: float = 1.0) -> torch.Tensor:
        cosine = F.linear(F.normalize(embeddings), F.normalize(self.weight)).clamp(-1 + 1e-7, 1 - 1e-7)
        target = cosine.gather(1, labels[:, None])
        m2, m3 = self.m2 * margin_scale, self.m3 * margin_scale
        if self.m1 != 1.0 or m2 != 0.0:
            theta = torch.acos(target)
            margined = torch.cos(self.m1 * theta + m2)
            # Past pi the angular margin would raise the logit again; fall back to a linear penalty there.
            limit = math.pi - m2
            margined = torch.where(theta * self.m1 < limit, margined, target - m2 * math.sin(m2))
        else:
            margined = target
        margined = margined - m3
        logits = cosine.scatter(1, labels[:, None], margined) * self.s
        return F.cross_entropy(logits, labels)


def triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2,
                 mining: str = "batch_hard") -> torch.Tensor:
    """Triplet loss on L2-normalised embeddings with batch-hard or semi-hard mining."""
    embeddings = F.normalize(embeddings)
    distance = (2.0 - 2.0 * embeddings @ embeddings.t()).clamp_min(0.0).add(1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive_mask = same & ~eye
    has_positive = positive_mask.any(1)
    large = distance.detach().max() + 1.0
    hardest_positive = torch.where(positive_mask, distance, torch.zeros_like(distance)).max(1).values
    if mining == "batch_hard":
        hardest_negative = torch.where(same, distance + large, distance).min(1).values
        losses = F.relu(hardest_positive - hardest_negative + margin)
    elif mining == "semi_hard":
        # The closest negative still farther than the positive; the hardest one if none is.
        farther = ~same & (distance > hardest_positive[:, None])
        semi = torch.where(farther, distance, distance + large).min(1).values
        hardest_negative = torch.where(same, distance + large, distance).min(1).values
        negative = torch.where(farther.any(1), semi, hardest_negative)
        losses = F.relu(hardest_positive - negative + margin)
    else:
        raise ValueError(f"unknown triplet mining: {mining}")
    # The mean over anchors with a positive, 0 where none has one, by arithmetic: asking which anchors have one
    # (a boolean index, a tensor's truth) would make the CPU wait for the GPU every step.
    return torch.where(has_positive, losses, 0.0).sum() / has_positive.sum().clamp_min(1)


class DistillationLoss(nn.Module):
    """1 - cos(projection(student), teacher): the projection lets teacher and student differ in width."""

    def __init__(self, student_size: int, teacher_size: int) -> None:
        super().__init__()
        self.projection = nn.Linear(student_size, teacher_size, bias=False)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return (1.0 - F.cosine_similarity(self.projection(student), teacher, dim=1)).mean()


def relational_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, closest: float = 1.0) -> torch.Tensor:
    """1 - the correlation between the student's cosines among the faces of a batch and the teacher's own.

    student: (N, D) embeddings; teacher: (N, T) L2-normalised, un-centred teacher vectors. The teacher's
    cosines are those of the metric it was built for: DistillationLoss needs centred targets (a shared
    component would dominate a cosine to each vector) and so passes on a different metric, and on
    facekit's LFW crops dlib's raw cosine scores 98.8 %, TAR 0.96 at FAR 1e-3, its centred one 97.8 %,
    TAR 0.78. A correlation is blind to the two metrics' different ranges: it asks only that the student
    finds close the pairs the teacher finds close.

    closest < 1 takes the correlation over only that fraction of the pairs, those the teacher finds closest.
    Over all pairs the many clearly different faces rule the correlation; TAR at a low false-accept rate is
    decided by the few close ones. The teacher alone chooses: letting in the pairs the student finds closest
    too would pick pairs because the two sides disagree on them (in a pilot it held the correlation near 0).
    """
    if len(student) < 3:
        return student.sum() * 0.0
    upper = torch.triu_indices(len(student), len(student), offset=1, device=student.device)
    student = F.normalize(student, dim=1)
    pairs = torch.stack([(student @ student.t())[upper[0], upper[1]], (teacher @ teacher.t())[upper[0], upper[1]]])
    if closest < 1.0:
        count = max(3, int(closest * pairs.shape[1]))  # count <= the pairs: N >= 3 gives at least 3
        pairs = pairs[:, pairs[1].topk(count).indices]
    return 1.0 - torch.corrcoef(pairs)[0, 1]

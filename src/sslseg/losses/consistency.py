"""Consistency losses for semi-supervised fine-tuning: a student's prediction on a strongly augmented view of
an unlabeled image against a teacher's prediction on a weak view of it, where the teacher is confident.

FixMatch (Sohn et al. 2020): "we first generate pseudo-labels using the model's predictions on weakly-augmented
unlabeled images. For a given image, the pseudo-label is only retained if the model produces a high-confidence
prediction. The model is then trained to predict the pseudo-label when fed a strongly-augmented version of the
same image." Here per pixel, with the mean teacher of Tarvainen & Valpola (2017) as the labeller.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _check_confidence(confidence: float) -> None:
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must lie in [0.5, 1), got {confidence}")


def masked_dice(probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 − soft Dice of probabilities against a 0/1 target over the pixels `mask` keeps (all B×H×W), pooled
    over the batch as the supervised Dice loss pools it: a rare class weighs as much as a common one."""
    inter = (probs * target * mask).sum()
    total = ((probs + target) * mask).sum()
    return 1.0 - (2.0 * inter + 1.0) / (total + 1.0)


def class_consistency(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, confidence: float, dice: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the student's B×K×H×W logits against the teacher's argmax, on pixels whose top
    class probability is at least `confidence`; averaged over all pixels, as FixMatch averages over all
    images. With `dice`, plus the mean over classes of their Dice on those pixels (the supervised loss's
    form), so that the confident majority class does not drown the rest. Returns (loss, share used)."""
    _check_confidence(confidence)
    if student_logits.shape != teacher_probs.shape:
        raise ValueError(
            f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_probs.shape)} differ"
        )
    top, pseudo = teacher_probs.max(dim=1)
    keep = (top >= confidence).float()
    loss = (F.cross_entropy(student_logits, pseudo, reduction="none") * keep).mean()
    if dice:
        probs = student_logits.softmax(dim=1)
        k = student_logits.shape[1]
        loss = loss + sum(masked_dice(probs[:, c], (pseudo == c).float(), keep) for c in range(k)) / k
    return loss, keep.mean()


def map_consistency(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    binary: Sequence[int],
    confidence: float,
    dice: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Consistency of dense sigmoid maps (instance heads: foreground, distance, contact…), B×K×H×W.

    Binary channels (`binary`) are pseudo-labelled like FixMatch's classes: BCE against the teacher's
    0/1 decision where it is at least `confidence` sure either way. The other channels (regressed maps) are
    pulled to the teacher's values by squared error on the pixels whose foreground (channel 0) the teacher
    is sure of. Averaged over all pixels; with `dice`, each binary channel adds its Dice on its sure pixels,
    as the supervised head loss adds Dice to BCE (a foreground or contact map is mostly confident background,
    which alone would teach the student to miss objects). Returns (loss, share of foreground pixels used)."""
    _check_confidence(confidence)
    if student_logits.shape != teacher_probs.shape:
        raise ValueError(
            f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_probs.shape)} differ"
        )
    if 0 not in binary:
        raise ValueError("channel 0 must be the binary foreground map")
    sure = (torch.maximum(teacher_probs, 1 - teacher_probs) >= confidence).float()
    loss = student_logits.new_zeros(())
    for k in range(student_logits.shape[1]):
        if k in binary:
            pseudo = (teacher_probs[:, k] >= 0.5).float()
            bce = F.binary_cross_entropy_with_logits(student_logits[:, k], pseudo, reduction="none")
            loss = loss + (bce * sure[:, k]).mean()
            if dice:
                loss = loss + masked_dice(student_logits[:, k].sigmoid(), pseudo, sure[:, k])
        else:
            err = (student_logits[:, k].sigmoid() - teacher_probs[:, k]) ** 2
            loss = loss + (err * sure[:, 0]).mean()
    return loss, sure[:, 0].mean()

"""Denoiser objectives of Salman et al. (2020), on [0, 1] images x and noisy x + d:

- mse:  ||D(x + d) - x||^2 (mean over pixels);
- stab: CE(f(D(x + d)), argmax f(x)) -- hard labels of the frozen classifier on the
        clean image, as the official code; `soft_targets` uses softmax f(x) instead
        (the TF port);
- clf:  CE(f(D(x + d)), y) with the true labels.

The classifiers are frozen: eval mode (BatchNorm uses its running statistics and never
updates them) and `requires_grad=False` on every parameter, so the gradient flows
*through* f into D but no classifier weight gets a gradient or changes.

Query-access setting (`surrogates`): the target classifier is not given to the
objective at all, so it cannot be called. With several surrogates the default mode is
**round-robin per batch** (batch k uses surrogate k mod K), as the official
`train_denoiser_multi_classifier.py`: each step costs one classifier forward/backward,
the same as white-box training, and over an epoch every surrogate shapes the denoiser
equally. `average` (mean of the K losses on every batch) gives lower-variance gradients
at K times the cost per step.

`mse_weight` > 0 adds `mse_weight * mse` to stab/clf: a regulariser meant to keep a
fine-tuned MSE denoiser from collapsing (observed without it: Stab at lr 1e-3 on an MSE
denoiser dropped its noisy accuracy from 0.28 to 0.08 before recovering); whether it
helps certified accuracy is not measured yet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dsmooth.errors import UserError

OBJECTIVES = ("mse", "stab", "clf")
SURROGATE_MODES = ("round-robin", "average")


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no parameter gradients: a fixed function D's gradient flows through."""
    if not isinstance(model, nn.Module):
        raise UserError(
            "the stab and clf objectives need white-box PyTorch classifiers and surrogates "
            "(gradients flow through them); this one is a black box (e.g. ONNX, a "
            "SavedModel or a server), which training can only validate on."
        )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class DenoiserObjective:
    """loss(denoised, clean, labels, step) for one of OBJECTIVES."""

    def __init__(
        self,
        name: str,
        classifiers: Sequence[nn.Module] = (),
        *,
        soft_targets: bool = False,
        mse_weight: float = 0.0,
        mode: str = "round-robin",
        autocast: Callable | None = None,
    ):
        if name not in OBJECTIVES:
            raise UserError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}.")
        if mode not in SURROGATE_MODES:
            raise UserError(f"surrogate mode must be one of {', '.join(SURROGATE_MODES)}.")
        if name != "mse" and not classifiers:
            raise UserError(f"the {name} objective needs a classifier (--classifier).")
        if mse_weight < 0:
            raise UserError(f"the MSE weight must be >= 0, got {mse_weight}.")
        self.name = name
        self.classifiers = [freeze(c) for c in classifiers] if name != "mse" else []
        self.soft_targets = soft_targets
        self.mse_weight = mse_weight
        self.mode = mode
        # the trainer passes its autocast (bf16 on its device's type); none: plain fp32 on
        # whatever device the tensors are on
        self.autocast = autocast or contextlib.nullcontext

    def pick(self, step: int) -> list[nn.Module]:
        """The classifiers used at `step` (round-robin: one; average: all)."""
        if self.mode == "average":
            return self.classifiers
        return [self.classifiers[step % len(self.classifiers)]]

    def __call__(
        self, denoised: torch.Tensor, clean: torch.Tensor, labels: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict]:
        n = len(clean)
        mse = F.mse_loss(denoised.float(), clean)
        stats = {"mse": mse.detach() * n, "n": n}
        if self.name == "mse":
            stats["loss"] = mse.detach() * n
            return mse, stats
        ces, agree = [], 0.0
        for f in self.pick(step):
            targets = self._targets(f, clean, labels)
            with self.autocast():
                logits = f(denoised).float()
            ces.append(F.cross_entropy(logits, targets))
            hard = targets.argmax(1) if targets.ndim == 2 else targets
            agree += float((logits.detach().argmax(1) == hard).sum())
        loss = torch.stack(ces).mean()
        stats["ce"] = loss.detach() * n
        stats["acc"] = agree / len(ces)
        if self.mse_weight > 0:
            loss = loss + self.mse_weight * mse
        stats["loss"] = loss.detach() * n
        return loss, stats

    def _targets(self, f: nn.Module, clean: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.name == "clf":
            return labels
        with torch.no_grad(), self.autocast():
            logits = f(clean).float()
        return logits.softmax(1) if self.soft_targets else logits.argmax(1)

"""Denoiser validation: PSNR of D(x + d) against x, and the accuracy of f(D(x + d)) under
one noise draw per image (the per-draw accuracy a smoothed classifier is built from).

The noise of image i depends only on (seed, i) (`dsmooth.pipeline.evaluation.image_noise`), so
numbers are comparable across epochs, batch sizes and with `dsmooth evaluate`. It is drawn
on the CPU and moved to the device, so they are also comparable across devices.

Everything runs on the denoiser's device (or the given one); each classifier is handed
its input on its own device (`module_device`: a module's parameters, a black box's
`device`, e.g. the CPU for ONNX or a server), and its answer, a tensor or numpy, is
read back on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from tqdm import tqdm

from dsmooth.certify.base_classifier import module_device, output_tensor
from dsmooth.data.transforms import to_float_nchw
from dsmooth.pipeline.evaluation import image_noise
from dsmooth.training.precision import autocast


@torch.no_grad()
def evaluate_denoiser(
    denoiser: nn.Module | None,
    images: torch.Tensor,
    *,
    labels: torch.Tensor,
    sigma: float,
    classifiers: Mapping[str, nn.Module] | None = None,
    batch: int = 250,
    precision: str = "fp32",
    channels_last: bool = False,
    seed: int = 0,
    progress: bool = False,
    prefix: str = "val_",
    device: torch.device | str | None = None,
) -> dict:
    """{prefix}psnr (dB, mean over images of D's output clipped to [0, 1]), {prefix}mse,
    and {prefix}<name>_acc: accuracy of classifier <name> on D(x + d) for each classifier.
    With `denoiser=None` the classifiers see x + d directly (the no-denoiser baseline).
    `device`: where x + d and D run (None: the denoiser's device, the CPU without one)."""
    classifiers = dict(classifiers or {})
    device = torch.device(device) if device is not None else module_device(denoiser)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if denoiser is not None:
        denoiser.eval()
    for f in classifiers.values():
        if isinstance(f, nn.Module):
            f.eval()
    devices = {name: module_device(f) for name, f in classifiers.items()}
    psnr_sum = mse_sum = 0.0
    correct = dict.fromkeys(classifiers, 0.0)
    n = len(images)
    for i in tqdm(range(0, n, batch), desc="validate", unit="batch", disable=not progress):
        x = to_float_nchw(images[i : i + batch])
        y = labels[i : i + batch]
        noise = torch.stack(
            [image_noise(x.shape[1:], sigma, seed, j) for j in range(i, i + len(x))]
        )
        xn = (x + noise).to(device).contiguous(memory_format=fmt)
        with autocast(precision, device):
            out = denoiser(xn).float() if denoiser is not None else xn
            for name, f in classifiers.items():
                pred = _labels(f(out.to(devices[name]).contiguous(memory_format=fmt)))
                correct[name] += float((pred == y).sum())
        err = (out.float().clamp(0, 1) - x.to(device)).pow(2).flatten(1).mean(1)
        mse_sum += float(err.sum())
        psnr_sum += float((10 * torch.log10(1.0 / err.clamp_min(1e-10))).sum())
    result = {
        f"{prefix}psnr": psnr_sum / n if n else math.nan,
        f"{prefix}mse": mse_sum / n if n else math.nan,
    }
    for name, c in correct.items():
        result[f"{prefix}{name}_acc"] = c / n if n else math.nan
    return result


def _labels(out) -> torch.Tensor:
    """Labels on the CPU from a classifier's answer: scores (N, K) or labels (N,), as a
    tensor on any device, or numpy (a black box), or the first of several outputs."""
    out = output_tensor(out).detach()
    return (out.float().argmax(1) if out.ndim == 2 else out).cpu()


def clean_accuracy(f, images, labels, batch: int, precision: str = "fp32") -> float:
    """The accuracy of `f` on the clean images (uint8 NHWC, as training reads them), run
    on `f`'s device."""
    correct = 0
    device = module_device(f)
    with torch.no_grad(), autocast(precision, device):
        for i in range(0, len(images), batch):
            pred = _labels(f(to_float_nchw(images[i : i + batch]).to(device)))
            correct += int((pred == labels[i : i + batch]).sum())
    return correct / max(len(images), 1)


def torch_outputs(f):
    """`f` with its outputs as torch tensors (a black-box source such as ONNX answers in
    numpy); an nn.Module as it is."""
    import numpy as np

    if isinstance(f, torch.nn.Module):
        return f

    def run(x):
        out = f(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))

    return run


def denoiser_report(
    denoiser: nn.Module,
    images: torch.Tensor,
    *,
    labels: torch.Tensor,
    sigma: float,
    classifier=None,
    batch: int = 250,
    precision: str = "fp32",
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """PSNR of D(x + d) and, with a classifier, the accuracy of f(D(x + d)) next to the
    no-denoiser baseline f(x + d) and the clean accuracy f(x) (`dsmooth test-denoiser`)."""
    classifiers = {} if classifier is None else {"noisy": torch_outputs(classifier)}
    common = dict(batch=batch, precision=precision, seed=seed, progress=progress)
    result = {"n": len(images), "sigma": sigma, "precision": precision}
    result.update(
        evaluate_denoiser(
            denoiser,
            images,
            labels=labels,
            sigma=sigma,
            classifiers=classifiers,
            prefix="",
            **common,
        )
    )
    if classifiers:
        baseline = evaluate_denoiser(
            None, images, labels=labels, sigma=sigma, classifiers=classifiers, prefix="", **common
        )
        result["psnr_noisy_input"] = baseline["psnr"]
        result["no_denoiser_noisy_acc"] = baseline["noisy_acc"]
        result["clean_acc"] = clean_accuracy(classifiers["noisy"], images, labels, batch, precision)
    return result

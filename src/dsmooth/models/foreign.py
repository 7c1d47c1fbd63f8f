"""Foreign weights: PyTorch state dicts (`.pt/.pth/.th/.bin`, or `.safetensors` without a
dsmooth config) loaded into a registry architecture.

Files are read with `torch.load(weights_only=True)`, which only rebuilds tensors and plain
containers, never arbitrary objects; a pickled whole model is refused. Accepted layouts:
a bare state dict, or one nested under `state_dict` / `model_state_dict` / `model` /
`net`; keys with `module.` (DataParallel) components; and keys of a
`Sequential(normalize_layer, model)` (`1.conv1.weight`, as in the Cohen / Salman code).
The official denoised-smoothing checkpoints name their architecture (`arch`), so they
need no `--arch`.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from dsmooth.errors import UserError
from dsmooth.models import create, list_models, model_kind
from dsmooth.models.config import ModelConfig
from dsmooth.models.normalize import Normalize, parse_stats

#: Suffixes taken for PyTorch state dicts.
STATE_DICT_SUFFIXES = {".pt", ".pth", ".th", ".bin", ".ckpt", ".tar"}

#: `arch` names of the official code bases -> our architectures.
OFFICIAL_ARCHITECTURES = {
    "cifar_dncnn": "dncnn",
    "cifar_dncnn_wide": "dncnn_wide",
    "imagenet_dncnn": "dncnn",
    "memnet": "memnet",
    "imagenet_memnet": "memnet",
    "cifar_resnet20": "cohen_resnet20",
    "cifar_resnet110": "cohen_resnet110",
    "cifar_wrn": "wrn28_10",
}

_NESTING_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


def is_torchscript_archive(path: Path) -> bool:
    """TorchScript zips hold code; state-dict zips (`torch.save`) hold only `data.pkl`."""
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def load_torch_file(path: str | os.PathLike):
    """What a `torch.save` file holds, read with `torch.load(weights_only=True)`: tensors
    and plain containers only, never code. A file that needs more (a pickled whole model,
    any other Python object) is refused with one sentence of our own: torch's message
    carries terminal escape codes and advises loading with weights_only=False, which
    would run whatever code the file names."""
    p = Path(path)
    try:
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        text = _plain(str(e))
        refused = isinstance(e, pickle.UnpicklingError) or "weights_only" in text
        if refused and ("weights only load failed" in text.lower() or "Unpickler" in text):
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            what = f" ({found.group(1)})" if found else ""
            raise UserError(
                f"cannot load {p} safely: it holds pickled Python objects{what}, not only "
                "tensors, and dsmooth never unpickles code; re-save the weights with "
                "torch.save(model.state_dict(), PATH), or export the model (TorchScript, ONNX)."
            ) from None
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        raise UserError(
            f"cannot read {p} as PyTorch weights ({type(e).__name__}: {first[:200]})."
        ) from None


def _plain(text: str) -> str:
    """`text` without terminal escape sequences (colours, bold)."""
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a foreign weights file, and its scalar extras (e.g. `arch`, `best_prec1`)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"weights file not found: {p}.")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p)), {}
        except (OSError, SafetensorError) as e:
            raise UserError(f"cannot read {p} as safetensors ({e}).") from None
    if is_torchscript_archive(p):
        raise UserError(f"{p} is a TorchScript model, not a state dict; load it as it is.")
    obj = load_torch_file(p)
    extras: dict = {}
    while isinstance(obj, dict) and not _is_tensor_dict(obj):
        extras.update({k: v for k, v in obj.items() if isinstance(v, (str, int, float, bool))})
        inner = next((obj[k] for k in _NESTING_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not _is_tensor_dict(obj):
        raise UserError(f"{p} holds no state dict (a mapping of names to tensors).")
    return {str(k): v for k, v in obj.items()}, extras


def _is_tensor_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_module(key: str) -> str:
    return ".".join(part for part in key.split(".") if part != "module")


def fit_state_dict(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    source: str = "the weights",
    arch: str = "the architecture",
) -> dict[str, torch.Tensor]:
    """Rename `state`'s keys to `model`'s: drops `module.`, a `Sequential` index, or adds
    `net.` (our `NormalizedClassifier`). Missing `num_batches_tracked` and normalisation
    buffers are taken from `model`. Raises a UserError naming what does not fit."""
    target = model.state_dict()
    own_norm = {k for k, m in model.named_modules() if isinstance(m, Normalize)}
    optional = {k for k in target if k.endswith("num_batches_tracked")}
    optional |= {k for k in target if k.rsplit(".", 1)[0] in own_norm}
    required = set(target) - optional
    state = {_strip_module(k): v for k, v in state.items()}

    best = None
    for prefix in _leading_prefixes(state):
        for add in ("", "net."):
            mapped = {add + k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            score = len(required & set(mapped)) - len(set(mapped) - set(target))
            if best is None or score > best[0]:
                best = (score, mapped, prefix)
    _, mapped, prefix = best
    missing = sorted(required - set(mapped))
    unexpected = sorted(set(mapped) - set(target))
    if missing or unexpected:
        raise UserError(
            f"{source} do not fit {arch}: {len(missing)} missing "
            f"(e.g. {', '.join(missing[:3]) or '-'}), {len(unexpected)} unexpected "
            f"(e.g. {', '.join(unexpected[:3]) or '-'}); check --arch."
        )
    wrong = [k for k, v in mapped.items() if tuple(v.shape) != tuple(target[k].shape)]
    if wrong:
        k = wrong[0]
        raise UserError(
            f"{source} do not fit {arch}: {k} has shape {tuple(mapped[k].shape)}, "
            f"expected {tuple(target[k].shape)} ({len(wrong)} mismatches); check --arch."
        )
    out = {k: v.to(target[k].dtype) for k, v in mapped.items()}
    for k in optional - set(out):
        out[k] = target[k]
    return out


def _leading_prefixes(state: dict) -> list[str]:
    """ "" plus each leading Sequential index ("1.") that some keys share."""
    prefixes = [""]
    firsts = {k.split(".", 1)[0] for k in state if "." in k}
    prefixes += sorted(f"{f}." for f in firsts if f.isdigit())
    return prefixes


def infer_num_classes(model: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """The output width of the weights' last linear layer, if it differs from the model's."""
    heads = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not heads:
        return None
    suffix = heads[-1].split(".")[-1] + ".weight"
    candidates = [v for k, v in state.items() if _strip_module(k).endswith(suffix) and v.ndim == 2]
    return int(candidates[-1].shape[0]) if candidates else None


def import_weights(
    path: str | os.PathLike,
    arch: str | None = None,
    mean: Sequence[float] | str | None = None,
    std: Sequence[float] | str | None = None,
    num_classes: int | None = None,
) -> tuple[nn.Module, ModelConfig]:
    """Load a foreign state dict into architecture `arch`; returns (module in eval mode,
    its checked checkpoint config, ready for `save_checkpoint`)."""
    p = Path(path)
    state, extras = read_state_dict(p)
    arch = _architecture(p, arch, extras)
    kind = model_kind(arch)
    mean, std = parse_stats(mean, "mean"), parse_stats(std, "std")
    if kind == "classifier":
        kwargs = _classifier_kwargs(arch, state, mean=mean, std=std, num_classes=num_classes)
    elif mean is not None or std is not None:
        raise UserError(f"{arch} is a denoiser: it takes no mean/std normalisation.")
    else:
        kwargs = {}
    try:
        model = create(arch, **kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"cannot build {arch} with {kwargs} ({e}).") from None
    fitted = fit_state_dict(model, state, source=f"the weights in {p}", arch=arch)
    model.load_state_dict(fitted, strict=True)
    norm = next((m for m in model.modules() if isinstance(m, Normalize)), None)
    if norm is not None:  # an explicit mean/std wins over buffers found in the file
        with torch.no_grad():
            if mean is not None:
                norm.mean.copy_(torch.tensor(mean).view_as(norm.mean))
            if std is not None:
                norm.std.copy_(torch.tensor(std).view_as(norm.std))
    config = {
        "architecture": arch,
        "kind": kind,
        "kwargs": kwargs,
        "input_range": [0.0, 1.0],
        "source": {
            "file": p.name,
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            "format": "safetensors" if p.suffix == ".safetensors" else "pytorch state dict",
            **{k: v for k, v in extras.items() if k != "arch"},
            **({"arch": extras["arch"]} if "arch" in extras else {}),
        },
    }
    if norm is not None:
        config["normalization"] = {
            "mean": [round(float(v), 6) for v in norm.mean.flatten()],
            "std": [round(float(v), 6) for v in norm.std.flatten()],
        }
    if kind == "classifier":
        config["num_classes"] = _output_width(model)
    return model.eval(), ModelConfig.from_dict(config, where=str(p))


def _architecture(p: Path, arch: str | None, extras: dict) -> str:
    """`arch`, or the one the file names (official names mapped to ours); a known one."""
    if arch is None and isinstance(extras.get("arch"), str):
        arch = OFFICIAL_ARCHITECTURES.get(extras["arch"], extras["arch"])
    if arch is None:
        raise UserError(
            f"{p} is a plain state dict; name its architecture with --arch or the spec "
            f"ARCH:{p} (known: {', '.join(list_models())})."
        )
    if arch not in list_models():
        raise UserError(f"unknown architecture {arch!r}; known: {', '.join(list_models())}.")
    return arch


def _classifier_kwargs(
    arch: str,
    state: dict,
    *,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    num_classes: int | None,
) -> dict:
    """The constructor options of a classifier: the given normalisation, and the number of
    classes given or read off the weights' last linear layer."""
    kwargs: dict = {}
    if mean is not None:
        kwargs["mean"] = list(mean)
    if std is not None:
        kwargs["std"] = list(std)
    if num_classes is None:
        num_classes = infer_num_classes(create(arch), state)
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    return kwargs


def _output_width(model: nn.Module) -> int | None:
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return int(heads[-1].out_features) if heads else None

"""The input contract of a foreign classifier, and the conversion from dsmooth's pixel space.

dsmooth adds noise to float32 NCHW images in [0, 1] (docs/design.md). A classifier
from elsewhere may want [0, 255], channels last, BGR, another size, or its
normalisation done by the caller. The user states that once (`InputContract`);
`convert` maps a noisy [0, 1] NCHW batch to what the model wants. The conversion is
differentiable (except for integer inputs), so white-box models stay white-box.

Normalisation is stated in the units of the model's range: the model receives
`(x * range - mean) / std` (mean 127.5, std 127.5 with range 255 gives [-1, 1]).
Noisy images leave [0, 1]; nothing is clipped unless the model takes integers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from dsmooth.errors import UserError
from dsmooth.sources.options import SourceOptions

LAYOUTS = ("auto", "NCHW", "NHWC")
CHANNEL_ORDERS = ("RGB", "BGR")
DTYPES = ("float32", "uint8")


@dataclass(frozen=True)
class InputContract:
    """What a classifier expects as input; the default is dsmooth's own convention."""

    range: float = 1.0
    layout: str = "auto"
    channel_order: str = "RGB"
    size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    dtype: str = "float32"

    def __post_init__(self):
        if self.range not in (1.0, 255.0):
            raise UserError(f"input range must be 1 or 255, got {self.range:g}.")
        if self.layout not in LAYOUTS:
            raise UserError(f"input layout must be one of {', '.join(LAYOUTS)}, got {self.layout}.")
        if self.channel_order not in CHANNEL_ORDERS:
            raise UserError(f"channel order must be RGB or BGR, got {self.channel_order}.")
        if self.dtype not in DTYPES:
            raise UserError(f"input dtype must be float32 or uint8, got {self.dtype}.")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise UserError(f"input size must be two positive numbers HxW, got {self.size}.")
        if self.std is not None and any(s == 0 for s in self.std):
            raise UserError("input std must not contain zeros.")

    @property
    def is_identity(self) -> bool:
        """True when the model takes dsmooth's [0, 1] RGB NCHW float images unchanged."""
        return (
            self.range == 1.0
            and self.layout in ("auto", "NCHW")
            and self.channel_order == "RGB"
            and self.size is None
            and self.mean is None
            and self.std is None
            and self.dtype == "float32"
        )

    def with_layout(self, layout: str) -> InputContract:
        """The same contract with `auto` replaced by a layout a source detected."""
        return self if self.layout != "auto" else replace(self, layout=layout)

    def convert(self, x: torch.Tensor) -> torch.Tensor:
        """A [0, 1] NCHW batch in the model's input format (NCHW unless layout is NHWC)."""
        if x.ndim != 4:
            raise UserError(f"expected an image batch (N, C, H, W), got shape {tuple(x.shape)}.")
        if self.size is not None and tuple(x.shape[-2:]) != tuple(self.size):
            x = F.interpolate(x, size=tuple(self.size), mode="bilinear", align_corners=False)
        if self.channel_order == "BGR":
            x = x.flip(1)
        if self.range != 1.0:
            x = x * self.range
        if self.mean is not None:
            x = x - _per_channel(self.mean, x)
        if self.std is not None:
            x = x / _per_channel(self.std, x)
        if self.dtype == "uint8":
            x = x.round().clamp(0, 255).to(torch.uint8)
        if self.layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        return x.contiguous()


def _per_channel(values: Sequence[float], x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=x.dtype, device=x.device)
    if t.numel() not in (1, x.shape[1]):
        raise UserError(
            f"input mean/std has {t.numel()} values but the images have {x.shape[1]} channels."
        )
    return t.view(1, -1, 1, 1)


def detect_layout(shape: Sequence) -> str | None:
    """NCHW or NHWC from a declared 4-d input shape (None/-1/str for unknown dims)."""
    if len(shape) != 4:
        return None

    def channels(d) -> bool:
        return isinstance(d, int) and d in (1, 3)

    if channels(shape[3]) and not channels(shape[1]):
        return "NHWC"
    if channels(shape[1]):
        return "NCHW"
    return None


def declared_channels(model) -> int | None:
    """The channels a model's input takes, where the model says: the declared input
    shape of a source that reads one (ONNX, Keras), else the first convolution of a torch
    module; None when nothing says (a linear model, a remote server)."""
    shape = getattr(model, "input_shape", None)
    contract = getattr(model, "contract", None)
    if isinstance(shape, (tuple, list)) and len(shape) == 4 and contract is not None:
        d = shape[3] if contract.layout == "NHWC" else shape[1]
        return d if isinstance(d, int) and d > 0 else None
    if isinstance(model, torch.nn.Module):
        for m in model.modules():
            conv = isinstance(m, torch.nn.Conv2d) or getattr(m, "original_name", "") == "Conv2d"
            weight = getattr(m, "weight", None) if conv else None
            if isinstance(weight, torch.Tensor) and weight.ndim == 4:
                return int(weight.shape[1]) * int(getattr(m, "groups", 1) or 1)
    return None


def check_channels(model, channels: int, role: str) -> None:
    """A UserError when images with `channels` channels would reach a model built for
    another number: a Normalize layer broadcasts 1 -> 3, so grayscale images would run
    through an RGB classifier with all three channels sharing one noise draw."""
    want = declared_channels(model)
    if want is not None and want != channels:
        raise UserError(
            f"the images have {channels} channel{'s' if channels != 1 else ''} but the "
            f"{role} takes {want}; convert the images (e.g. grayscale to RGB) or use a "
            f"{role} for {channels}-channel input."
        )


def parse_size(text: str | None) -> tuple[int, int] | None:
    """`224x224` or `224` -> (224, 224)."""
    if text is None or text == "":
        return None
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise UserError(f"input size must look like 224x224, got {text!r}.") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise UserError(f"input size must look like 224x224, got {text!r}.")
    return values


def parse_floats(text, name: str) -> tuple[float, ...] | None:
    """`0.485,0.456,0.406` -> a tuple of floats; a sequence passes through."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return (float(text),)
    if not isinstance(text, str):
        return tuple(float(v) for v in text)
    try:
        return tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise UserError(f"{name} must be comma-separated numbers, got {text!r}.") from None


def contract_from_options(options: SourceOptions | Mapping) -> InputContract:
    """The contract stated by `load_model` options (CLI flags or Python keywords)."""
    options = SourceOptions.of(options)
    if isinstance(options.contract, InputContract):
        return options.contract
    return InputContract(
        range=float(options.input_range or 1.0),
        layout=str(options.input_layout or "auto"),
        channel_order=str(options.channel_order or "RGB").upper(),
        size=parse_size(options.input_size),
        mean=parse_floats(options.input_mean, "input mean"),
        std=parse_floats(options.input_std, "input std"),
        dtype=str(options.input_dtype or "float32"),
    )


class ContractModule(torch.nn.Module):
    """A white-box model behind its input contract: takes [0, 1] NCHW, stays differentiable."""

    def __init__(self, model: torch.nn.Module, contract: InputContract):
        super().__init__()
        if contract.dtype != "float32":
            raise UserError("integer inputs are not differentiable; use them for black-box models.")
        self.model = model
        self.contract = contract

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.contract.convert(x))


class ContractFunction:
    """A black-box callable behind its input contract (for sources that do not convert)."""

    def __init__(self, fn, contract: InputContract):
        self.fn = fn
        self.contract = contract
        self.device = getattr(fn, "device", torch.device("cpu"))

    def __call__(self, x: torch.Tensor):
        return self.fn(self.contract.convert(x))


def apply_contract(model, options: SourceOptions | Mapping):
    """Put `model` behind the stated input contract unless its source already did.

    Sources that read the model's own input description (ONNX, Keras, SavedModel,
    remote servers) convert themselves and expose a `contract` attribute.
    """
    options = SourceOptions.of(options)
    if hasattr(model, "contract"):
        return model
    contract = contract_from_options(options).with_layout("NCHW")
    if contract.is_identity:
        return model
    if isinstance(model, torch.nn.Module):
        return ContractModule(model, contract)
    return ContractFunction(model, contract)

"""Keras 3 models (`.keras`, `.h5`) as differentiable `torch.nn.Module`s.

Keras 3 runs on a PyTorch backend, where a model *is* a `torch.nn.Module` whose
weights are torch parameters: dsmooth can certify it and train a denoiser through it
(Stab objective) without TensorFlow. The backend is chosen when Keras is first
imported (`KERAS_BACKEND`); dsmooth sets `torch` unless the process already chose,
and says so if another backend was chosen. Keras models take NHWC images (detected
from the model's input shape); the input contract converts from [0, 1] NCHW.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
import warnings
from pathlib import Path

import torch
from torch import nn

from dsmooth.errors import UserError
from dsmooth.sources.contract import InputContract, contract_from_options, detect_layout
from dsmooth.sources.options import SourceOptions

SUFFIXES = (".keras", ".h5", ".hdf5")


def import_keras():
    """Keras on the PyTorch backend, or a UserError saying how to get it."""
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError:
        raise UserError("Keras models need Keras 3: pip install 'dsmooth[keras]'.") from None
    if not hasattr(keras, "backend") or not hasattr(keras, "saving"):
        raise UserError("Keras models need Keras 3 (found an older Keras).")
    backend = keras.backend.backend()
    if backend != "torch":
        raise UserError(
            f"Keras is running on its {backend} backend; dsmooth needs the torch backend: "
            "set KERAS_BACKEND=torch before starting (or unset it)."
        )
    return keras


class KerasClassifier(nn.Module):
    """A Keras model behind its input contract; forward is differentiable in torch.

    With `image_output` (a Keras denoiser) an NHWC output is turned back into NCHW.
    The engine runs it eagerly: dynamo recompiles Keras' Python layers without end.
    """

    compilable = False
    compile_note = "Keras models run eagerly (torch.compile cannot trace their layers)"

    def __init__(self, model, contract: InputContract, image_output: bool = False):
        super().__init__()
        self.model = model
        self.contract = contract
        self.image_output = image_output

    def extra_repr(self) -> str:
        """The Keras architecture (strides, padding, activations), which the weights alone
        do not fix: part of the key under which the OpenVINO engine caches this model's
        graph. A model without a config gets a key of its own, so it is never reused."""
        try:
            config = json.dumps(self.model.get_config(), sort_keys=True, default=str)
        except Exception:
            config = f"unserialisable {uuid.uuid4()}"
        digest = hashlib.sha256(f"{config}|{self.contract}|{self.image_output}".encode())
        return f"keras_config_sha256={digest.hexdigest()}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(self.contract.convert(x), training=False)
        if isinstance(out, dict):
            out = next(iter(out.values())) if len(out) == 1 else out.get("logits", out)
        if isinstance(out, (list, tuple)):
            out = out[0]
        if self.image_output and self.contract.layout == "NHWC":
            out = out.permute(0, 3, 1, 2)
        return out


def input_shape(model) -> tuple | None:
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs or len(inputs) != 1:
        return None
    return tuple(inputs[0].shape)


def load(
    path: Path, contract: InputContract, device="cpu", image_output: bool = False
) -> KerasClassifier:
    keras = import_keras()
    try:
        with warnings.catch_warnings():  # Keras' own numpy 2 deprecation notices
            warnings.simplefilter("ignore", DeprecationWarning)
            model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as e:
        raise UserError(f"cannot load Keras model {path} ({type(e).__name__}: {e}).") from None
    shape = input_shape(model)
    contract = contract.with_layout((shape and detect_layout(shape)) or "NHWC")
    if contract.dtype != "float32":
        raise UserError("Keras models run white-box on float inputs; drop --input-dtype uint8.")
    module = KerasClassifier(model, contract, image_output)
    module.input_shape = shape
    for p in module.parameters():
        p.requires_grad_(False)
    return module.to(device).eval()


def resolve(spec: str, options: SourceOptions):
    path = Path(spec)
    if path.suffix.lower() not in SUFFIXES or "://" in spec:
        return None
    if not path.is_file():
        raise UserError(f"Keras file {path} does not exist.")
    if path.name.endswith(".weights.h5"):
        raise UserError(f"{path} holds weights only; save the whole model (model.save('m.keras')).")
    if options.as_classifier:
        return load(path, contract_from_options(options), options.device)
    # A denoiser (e.g. one exported by `dsmooth export --format keras`): [0, 1] in and out.
    return load(path, InputContract(), options.device, image_output=True)

"""TensorFlow SavedModel folders: a black-box classifier run by TensorFlow (extra `[tf]`).

The folder's serving signature (`serving_default`, or `--signature`) is called with the
converted batch; its input spec tells the layout and dtype. TensorFlow and PyTorch share
the process, so TensorFlow is held to the CPU and to few threads. For gradients, load a
Keras 3 `.keras` file instead (white-box on the PyTorch backend).
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dsmooth.errors import UserError
from dsmooth.sources.contract import InputContract, contract_from_options, detect_layout
from dsmooth.sources.options import SourceOptions
from dsmooth.sources.outputs import pick_output


def is_savedmodel(path: Path) -> bool:
    return path.is_dir() and (
        (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()
    )


def import_tensorflow():
    if "keras" not in sys.modules:  # TensorFlow imports Keras: keep Keras models loadable
        os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import tensorflow as tf
    except ImportError:
        raise UserError("SavedModel folders need TensorFlow: pip install 'dsmooth[tf]'.") from None
    try:  # only possible before TensorFlow has run anything
        tf.config.set_visible_devices([], "GPU")
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except (RuntimeError, ValueError):
        pass
    return tf


class SavedModelClassifier:
    """Callable: [0, 1] NCHW torch batch -> the signature's output (numpy)."""

    def __init__(
        self,
        path: Path,
        contract: InputContract,
        signature: str | None = None,
        output_name: str | None = None,
    ):
        tf = import_tensorflow()
        try:
            self.loaded = tf.saved_model.load(str(path))
        except Exception as e:
            raise UserError(f"cannot load SavedModel {path} ({type(e).__name__}: {e}).") from None
        signatures = dict(self.loaded.signatures)
        name = signature or ("serving_default" if "serving_default" in signatures else None)
        if name is None and len(signatures) == 1:
            name = next(iter(signatures))
        if name not in signatures:
            raise UserError(
                f"{path} has no signature {name or 'serving_default'!r}; it has "
                f"{', '.join(signatures) or 'none'} (choose one with --signature)."
            )
        self.fn = signatures[name]
        specs = self.fn.structured_input_signature[1]
        if len(specs) != 1:
            raise UserError(f"{path}:{name} takes {len(specs)} inputs; dsmooth feeds one batch.")
        self.input_name, spec = next(iter(specs.items()))
        self.dtype = spec.dtype.as_numpy_dtype
        shape = [d if d is not None else None for d in spec.shape.as_list()]
        contract = contract.with_layout(detect_layout(shape) or "NHWC")
        if self.dtype == np.uint8 and contract.dtype != "uint8":
            contract = replace(contract, dtype="uint8", range=255.0)
        self.contract = contract
        self.tf = tf
        self.path = path
        self.output_name = output_name
        self.device = torch.device("cpu")

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        array = self.contract.convert(x.detach().to("cpu", torch.float32)).numpy()
        outputs = self.fn(**{self.input_name: self.tf.constant(array.astype(self.dtype))})
        return np.array(pick_output(outputs, self.output_name, str(self.path)))  # writable


def resolve(spec: str, options: SourceOptions):
    path = Path(spec)
    if "://" in spec or not is_savedmodel(path):
        return None
    if not options.as_classifier:
        raise UserError(f"{path}: a SavedModel denoiser would be black-box; use a PyTorch one.")
    return SavedModelClassifier(
        path,
        contract_from_options(options),
        options.signature,
        options.output_name,
    )

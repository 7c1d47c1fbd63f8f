"""ONNX files (`.onnx`): a black-box classifier run by onnxruntime on the CPU.

The model's declared input tells the layout (NCHW or NHWC) and the element type
(float32, float16, float64 or uint8) unless the user's input contract says otherwise.
A model exported with a fixed batch size of 1 is run one image at a time. ONNX models
are black-box here: certify and predict work; training a denoiser through one needs a
white-box source (export the model as TorchScript or use the PyTorch original, or train
against a surrogate, docs/query-access.md).

OpenVINO reads ONNX files directly: `on_openvino` runs the same file on its CPU runtime
instead, in fp32 or (where the CPU computes it natively) bf16, which onnxruntime's CPU
provider lacks. The engine's `--backend` decides which runs (dsmooth.pipeline.engine).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dsmooth.errors import UserError
from dsmooth.sources.contract import InputContract, contract_from_options, detect_layout
from dsmooth.sources.options import SourceOptions
from dsmooth.sources.outputs import pick_output

_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
}


def _runtime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError("ONNX models need onnxruntime: pip install 'dsmooth[onnx]'.") from None
    return onnxruntime


class OnnxClassifier:
    """Callable: [0, 1] NCHW torch batch -> the model's output (numpy)."""

    runtime = "onnxruntime"
    precision = "fp32"
    _compiled = None  # OpenVINO's compiled model, when on_openvino made this one

    def __init__(self, path: Path, contract: InputContract, output_name: str | None = None):
        ort = _runtime()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:
            raise UserError(f"cannot load ONNX model {path} ({type(e).__name__}: {e}).") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise UserError(f"{path} has {len(inputs)} inputs; dsmooth feeds one image batch.")
        self.input = inputs[0]
        self.input_shape = tuple(self.input.shape)
        self.dtype = _NUMPY_TYPES.get(self.input.type)
        if self.dtype is None:
            raise UserError(
                f"{path} takes {self.input.type}, not an image tensor dsmooth can feed."
            )
        contract = contract.with_layout(detect_layout(self.input.shape) or "NCHW")
        if self.dtype == np.uint8 and contract.dtype != "uint8":
            contract = replace(contract, dtype="uint8", range=255.0)
        self.contract = contract
        self.batch = self.input.shape[0] if isinstance(self.input.shape[0], int) else None
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.output_name = output_name
        self.path = path
        self.device = torch.device("cpu")

    def on_openvino(self, precision: str = "fp32", threads: int | None = None) -> OnnxClassifier:
        """The same file compiled by OpenVINO's CPU runtime, at `precision` (fp32 or bf16:
        a hint OpenVINO honours where the CPU has bf16 units); this one is unchanged."""
        import openvino

        hints = {"fp32": "f32", "bf16": "bf16"}
        if precision not in hints:
            raise UserError(f"ONNX models run in fp32 or bf16 on OpenVINO, not {precision}.")
        config = {"INFERENCE_PRECISION_HINT": hints[precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        clone = copy.copy(self)
        clone._compiled = openvino.Core().compile_model(str(self.path), "CPU", config)
        clone.runtime, clone.precision = "openvino", precision
        return clone

    def _run(self, array: np.ndarray) -> np.ndarray:
        if self._compiled is not None:  # outputs in the file's order, as onnxruntime's
            result = self._compiled(array)
            outputs = [result[k] for k in range(len(self.output_names))]
        else:
            outputs = self.session.run(None, {self.input.name: array})
        return np.asarray(
            pick_output(
                dict(zip(self.output_names, outputs, strict=True)), self.output_name, str(self.path)
            )
        )

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        array = self.contract.convert(x.detach().to("cpu", torch.float32)).numpy()
        array = array.astype(self.dtype, copy=False)
        if self.batch is None or self.batch == len(array):
            return self._run(array)
        if self.batch != 1:
            raise UserError(
                f"{self.path} has a fixed batch size {self.batch}; export it with a dynamic "
                "batch axis or batch size 1."
            )
        return np.concatenate([self._run(array[i : i + 1]) for i in range(len(array))])


def resolve(spec: str, options: SourceOptions):
    path = Path(spec)
    if path.suffix.lower() != ".onnx" or "://" in spec:
        return None
    if not path.is_file():
        raise UserError(f"ONNX file {path} does not exist.")
    if not options.as_classifier:
        raise UserError(
            f"{path}: an ONNX denoiser would be black-box; dsmooth needs a denoiser it can run "
            "as PyTorch (a dsmooth checkpoint or TorchScript)."
        )
    return OnnxClassifier(path, contract_from_options(options), options.output_name)

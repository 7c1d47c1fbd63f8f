"""Export a denoiser (optionally with its classifier) as ONNX, TorchScript or Keras 3.

So the robust pipeline classifier(denoiser(x)) can run where dsmooth does not: ONNX
and TorchScript for model servers, and a Keras 3 `.keras` file (DnCNN-family
denoisers: convolutions, batch norm, ReLU, residual sums) so a TensorFlow user can put
our denoiser in front of their Keras classifier and deploy both in TensorFlow alone.
Every export is reloaded and compared with the PyTorch original on random images;
`TOLERANCE` is the largest allowed difference, relative to the output's scale.
Exported models take the same float [0, 1] images, NCHW, except Keras, which takes and
returns NHWC (channels last, Keras' default).
"""

from __future__ import annotations

import json
import operator
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from dsmooth.errors import UserError, brief

FORMATS = ("onnx", "torchscript", "keras")
#: Largest |exported - original| allowed, times max(1, max |original|).
TOLERANCE = 1e-4


def max_error(expected: np.ndarray, got: np.ndarray) -> float:
    """The largest difference relative to the output scale (what TOLERANCE bounds)."""
    if expected.shape != got.shape:
        raise UserError(f"exported output has shape {got.shape}, expected {expected.shape}.")
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    return float(np.abs(expected - got).max(initial=0.0)) / scale


def reference(model: nn.Module, inputs: np.ndarray) -> np.ndarray:
    """The PyTorch outputs, or a UserError when the model does not take such inputs."""
    with torch.inference_mode():
        try:
            return model(torch.from_numpy(inputs)).float().numpy()
        except Exception as e:
            raise UserError(
                f"the model fails on images of shape {tuple(inputs.shape[1:])} ({brief(e)}); "
                "give its input shape with --input-shape C,H,W."
            ) from None


def sample_inputs(shape: tuple[int, int, int], n: int = 4, seed: int = 0) -> np.ndarray:
    """Noisy-looking [0, 1]-ish images: the kind of input a denoiser sees."""
    g = np.random.default_rng(seed)
    x = g.random((n, *shape), dtype=np.float32)
    return (x + 0.25 * g.standard_normal(x.shape, dtype=np.float32)).astype(np.float32)


# ONNX ---------------------------------------------------------------------------------


def export_onnx(model: nn.Module, path: Path, shape: tuple[int, int, int]) -> None:
    """ONNX with a dynamic batch axis; input `input`, output `output`."""
    example = torch.from_numpy(sample_inputs(shape, 2))
    kwargs = dict(input_names=["input"], output_names=["output"], opset_version=17)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                **kwargs,
            )
        except Exception as e:
            raise UserError(f"ONNX export failed ({type(e).__name__}: {e}).") from None


def run_onnx(path: Path, inputs: np.ndarray) -> np.ndarray:
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("checking an ONNX export needs onnxruntime: dsmooth[onnx].") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


# TorchScript --------------------------------------------------------------------------


def export_torchscript(model: nn.Module, path: Path, shape: tuple[int, int, int]) -> None:
    example = torch.from_numpy(sample_inputs(shape, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, str(path))
        except Exception as e:
            raise UserError(f"TorchScript export failed ({type(e).__name__}: {e}).") from None


def run_torchscript(path: Path, inputs: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), map_location="cpu")
    return reference(loaded.eval(), inputs)


# Keras --------------------------------------------------------------------------------


class _Tracer(fx.Tracer):
    """Keeps Normalize layers whole (they become one Keras Normalization layer)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from dsmooth.models.normalize import Normalize

        return isinstance(m, Normalize) or super().is_leaf_module(m, qualname)


def to_keras(model: nn.Module, shape: tuple[int, int, int]):
    """A Keras 3 functional model computing `model`, on NHWC inputs (H, W left free).

    Supports what DnCNN-family denoisers and small CNNs use: Conv2d, BatchNorm2d
    (eval statistics), ReLU, Normalize, global average pooling, Flatten, Linear,
    Identity/Dropout, and sums/differences of tensors. Anything else is a UserError
    naming the operation.
    """
    from dsmooth.sources.keras import import_keras

    keras = import_keras()
    layers = keras.layers
    model = model.eval()
    try:
        graph = _Tracer().trace(model)
    except Exception as e:
        raise UserError(f"cannot trace the model for Keras export ({e}).") from None
    modules = dict(model.named_modules())
    env: dict[str, object] = {}
    inputs = None
    output = None

    def arg(a):
        return env[a.name] if isinstance(a, fx.Node) else a

    for node in graph.nodes:
        if node.op == "placeholder":
            if inputs is not None:
                raise _unsupported("models with several inputs")
            inputs = keras.Input(shape=(None, None, shape[0]), name="image")
            env[node.name] = inputs
        elif node.op == "call_module":
            env[node.name] = _module(layers, modules[node.target], arg(node.args[0]))
        elif node.op == "call_function" or node.op == "call_method":
            env[node.name] = _function(layers, node, arg)
        elif node.op == "output":
            output = arg(node.args[0])
        else:
            raise _unsupported(f"graph operation {node.op} {node.target}")
    return keras.Model(inputs, output, name="dsmooth_export")


def _unsupported(what: str) -> UserError:
    return UserError(f"Keras export does not support {what}; use ONNX or TorchScript.")


def _module(layers, m: nn.Module, x):
    """The Keras layers computing torch module `m` on `x`."""
    from dsmooth.models.normalize import Normalize

    if isinstance(m, nn.Conv2d):
        return _conv(layers, m, x)
    if isinstance(m, nn.BatchNorm2d):
        return _batch_norm(layers, m, x)
    if isinstance(m, nn.ReLU):
        return layers.ReLU()(x)
    if isinstance(m, (nn.Identity, nn.Dropout)):
        return x
    if isinstance(m, Normalize):
        mean = m.mean.flatten().numpy()
        std = m.std.flatten().numpy()
        return layers.Normalization(axis=-1, mean=mean, variance=std**2)(x)
    if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
        return layers.GlobalAveragePooling2D(keepdims=True)(x)
    if isinstance(m, nn.Flatten):
        return layers.Flatten()(layers.Permute((3, 1, 2))(x))
    if isinstance(m, nn.Linear):
        return _dense(layers, m, x)
    raise _unsupported(f"layer {type(m).__name__}")


def _batch_norm(layers, m: nn.BatchNorm2d, x):
    bn = layers.BatchNormalization(axis=-1, epsilon=m.eps, center=m.affine, scale=m.affine)
    y = bn(x)
    weights = []
    if m.affine:
        weights += [m.weight.detach().numpy(), m.bias.detach().numpy()]
    weights += [m.running_mean.numpy(), m.running_var.numpy()]
    bn.set_weights(weights)
    return y


def _dense(layers, m: nn.Linear, x):
    dense = layers.Dense(m.out_features, use_bias=m.bias is not None)
    y = dense(x)
    w = [m.weight.detach().numpy().T]
    if m.bias is not None:
        w.append(m.bias.detach().numpy())
    dense.set_weights(w)
    return y


def _conv(layers, m: nn.Conv2d, x):
    if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise UserError("Keras export supports plain zero-padded convolutions only.")
    ph, pw = m.padding
    kh, kw = m.kernel_size
    same = m.stride == (1, 1) and m.dilation == (1, 1) and (ph, pw) == (kh // 2, kw // 2)
    same = same and kh % 2 == 1 and kw % 2 == 1
    if not same and (ph or pw):
        x = layers.ZeroPadding2D(((ph, ph), (pw, pw)))(x)
    conv = layers.Conv2D(
        m.out_channels,
        (kh, kw),
        strides=m.stride,
        padding="same" if same else "valid",
        dilation_rate=m.dilation,
        use_bias=m.bias is not None,
    )
    y = conv(x)
    weights = [m.weight.detach().permute(2, 3, 1, 0).numpy()]
    if m.bias is not None:
        weights.append(m.bias.detach().numpy())
    conv.set_weights(weights)
    return y


def _function(layers, node: fx.Node, arg):
    target = node.target
    args = [arg(a) for a in node.args]
    if target in (F.relu, torch.relu, "relu"):
        return layers.ReLU()(args[0])
    tensors = [a for a in node.args if isinstance(a, fx.Node)]
    if target in (operator.add, torch.add, "add") and len(tensors) == 2:
        return layers.Add()(args[:2])
    if target in (operator.sub, torch.sub, "sub") and len(tensors) == 2:
        return layers.Subtract()(args[:2])
    if target in (torch.flatten, "flatten") and args[1:2] in ([1], []):
        return layers.Flatten()(layers.Permute((3, 1, 2))(args[0]))
    if target is F.adaptive_avg_pool2d and args[1] in (1, (1, 1)):
        return layers.GlobalAveragePooling2D(keepdims=True)(args[0])
    raise _unsupported(f"the operation {getattr(target, '__name__', target)}")


def export_keras(model: nn.Module, path: Path, shape: tuple[int, int, int]) -> None:
    if path.suffix != ".keras":
        raise UserError(f"a Keras export is a .keras file, got {path.name}.")
    with warnings.catch_warnings():  # Keras' own numpy 2 deprecation notices
        warnings.simplefilter("ignore", DeprecationWarning)
        to_keras(model, shape).save(str(path))


def run_keras(path: Path, inputs: np.ndarray) -> np.ndarray:
    """Outputs (NCHW or (N, K)) of a .keras export on the torch backend, in-process."""
    from dsmooth.sources.keras import import_keras

    keras = import_keras()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = keras.saving.load_model(str(path), compile=False)
    out = loaded(torch.from_numpy(inputs.transpose(0, 2, 3, 1).copy()), training=False)
    out = out.detach().cpu().numpy()
    return out.transpose(0, 3, 1, 2) if out.ndim == 4 else out


_TF_CHECK = """
import json, sys
import numpy as np
import keras
assert keras.backend.backend() == "tensorflow", keras.backend.backend()
model = keras.saving.load_model(sys.argv[1], compile=False)
data = np.load(sys.argv[2])
out = np.asarray(model(data["inputs"].transpose(0, 2, 3, 1), training=False))
np.save(sys.argv[3], out.transpose(0, 3, 1, 2) if out.ndim == 4 else out)
"""


def run_keras_tensorflow(path: Path, inputs: np.ndarray, timeout: float = 300) -> np.ndarray:
    """Outputs of a .keras export under Keras' TensorFlow backend, in a fresh process.

    Keras fixes its backend at import, so TensorFlow runs in a subprocess.
    """
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "inputs.npz", Path(tmp) / "out.npy"
        np.savez(data, inputs=inputs)
        env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _TF_CHECK, str(path), str(data), str(out)],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise UserError("the TensorFlow check of the Keras export timed out.") from None
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"the Keras export failed under TensorFlow ({last}).")
        return np.load(out)


def tensorflow_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


# one entry point ----------------------------------------------------------------------

_EXPORT = {"onnx": export_onnx, "torchscript": export_torchscript, "keras": export_keras}
_RUN = {"onnx": run_onnx, "torchscript": run_torchscript, "keras": run_keras}


def export(
    model: nn.Module,
    path: str | os.PathLike,
    fmt: str,
    shape: tuple[int, int, int] = (3, 32, 32),
    check_tensorflow: bool | None = None,
) -> dict:
    """Write `model` in format `fmt`, reload it, and compare; returns the check report.

    Raises a UserError (and removes the file) when the export does not match within
    TOLERANCE. For Keras, `check_tensorflow` (default: when TensorFlow is installed)
    also checks the file under the TensorFlow backend.
    """
    if fmt not in FORMATS:
        raise UserError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    if not isinstance(model, nn.Module):
        raise UserError("only PyTorch models (white-box) can be exported.")
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"the output folder {path.parent} does not exist.")
    model = model.eval().cpu()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    inputs = sample_inputs(shape)
    expected = reference(model, inputs)
    try:
        _EXPORT[fmt](model, tmp, shape)
        report = {"format": fmt, "tolerance": TOLERANCE, "images": len(inputs)}
        report["max_error"] = max_error(expected, _RUN[fmt](tmp, inputs))
        if fmt == "keras" and (
            check_tensorflow or (check_tensorflow is None and tensorflow_available())
        ):
            report["max_error_tensorflow"] = max_error(expected, run_keras_tensorflow(tmp, inputs))
        worst = max(v for k, v in report.items() if k.startswith("max_error"))
        if not worst <= TOLERANCE:
            raise UserError(
                f"the {fmt} export differs from the original by {worst:.2e} (> {TOLERANCE:g}); "
                "nothing was written."
            )
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    report["path"] = str(path)
    return report


def report_text(report: dict) -> str:
    return json.dumps(report, sort_keys=True)

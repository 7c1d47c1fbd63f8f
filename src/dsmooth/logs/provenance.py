"""How a result log was made, recorded beside it and checked before it is resumed.

`LOG.json` (next to `LOG`, e.g. `run.tsv.json`) holds every parameter that determines the
log's rows: the command, sigma, alpha, n0, n, the method and its targets / n_max / tol,
the seed, the noise version and mode, the models with checksums of their weights, the resolved
precision and device, and the data; plus what only informs (dsmooth and torch versions,
the engine options, the host). Resuming a log with parameters that would produce other
rows is an error that names the difference, so one log never mixes two experiments.
The TSV itself keeps the reference column layout, so the papers' readers still read it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from pathlib import Path

import torch
from torch import nn

from dsmooth._io import write_json
from dsmooth.errors import UserError

#: Keys whose values decide the rows; a resume must match them exactly.
DETERMINING = (
    "command",
    "sigma",
    "alpha",
    "n0",
    "n",
    "method",
    "radius",
    "n_max",
    "tol",
    "seed",
    "noise_version",
    "noise",
    "num_classes",
    "precision",
    "backend",
    "calibration",
    "device_type",
    # "ieee" (TF32 off, dsmooth.pipeline.engine.ieee_fp32) for fp32 on a GPU, else null
    "cuda_fp32",
    "models",
    "data",
    "class_names",
    "stop_if_misclassified",
)

#: How to make a resumed run match, for the keys a user sets with a flag.
_FLAGS = {
    "sigma": "--sigma",
    "alpha": "--alpha",
    "n0": "--n0",
    "n": "--n",
    "method": "--method",
    "radius": "--radius",
    "n_max": "--n-max",
    "tol": "--tol",
    "seed": "--seed",
    "noise": "--noise",
    "precision": "--precision",
    "backend": "--backend",
    "calibration": "--calibration-images",
    "device_type": "--device",
    "class_names": "--class-names",
    "stop_if_misclassified": "--stop-if-misclassified",
}


def sidecar(log: str | os.PathLike) -> Path:
    """The provenance file of a log."""
    return Path(str(log) + ".json")


def tensor_sha256(module: nn.Module) -> str:
    """A checksum of a module's weights and buffers (names, dtypes, shapes and values),
    independent of memory layout."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def describe_model(spec: str, model) -> dict:
    """The spec as given and a checksum: of the weights for a torch module, of the file
    for other local models (ONNX, Keras), none for a remote one (its URL is all we know)."""
    inner = getattr(model, "model", model)  # an engine wrapper holds the user's module
    if isinstance(inner, nn.Module):
        return {"spec": spec, "sha256": tensor_sha256(inner)}
    local = Path(spec.split(":", 1)[-1]) if not spec.startswith(("http:", "https:")) else None
    if local is not None and local.exists():
        return {"spec": spec, "sha256": file_sha256(local)}
    return {"spec": spec, "sha256": None}


def record(command: str, determining: dict, informing: dict) -> dict:
    from dsmooth._version import __version__

    return {
        "command": command,
        **determining,
        "dsmooth_version": __version__,
        "torch_version": torch.__version__,
        "python": sys.version.split()[0],
        "host": platform.processor() or platform.machine(),
        **informing,
    }


#: What a key meant in records written before it existed: logs made before engine v2 ran
#: on torch, and logs made before lattice noise existed used float noise.
_BEFORE_THE_KEY = {"backend": "torch", "noise": "gaussian"}


def _value(record: dict, key: str):
    value = record.get(key)
    return _BEFORE_THE_KEY.get(key) if value is None else value


def _comparable(key: str, value):
    if key == "models":  # a checksum identifies a model; its spec may be spelled otherwise
        return {
            role: (m.get("sha256") or m.get("spec")) if isinstance(m, dict) else m
            for role, m in (value or {}).items()
        }
    if key == "data" and isinstance(value, dict):  # the same file in another clone
        return {"name": Path(str(value.get("spec", ""))).name, "images": value.get("images")}
    return value


def differences(saved: dict, current: dict) -> list[str]:
    out = []
    for key in DETERMINING:
        # fp32 computes the same function on either backend (up to summation order, as
        # batch size and threads do)
        if key == "backend" and saved.get("precision") == current.get("precision") == "fp32":
            continue
        a, b = _comparable(key, _value(saved, key)), _comparable(key, _value(current, key))
        if a != b:
            out.append(key)
    return out


def _describe(key: str, saved: dict, current: dict) -> str:
    if key == "models":
        a, b = _comparable(key, saved.get(key)), _comparable(key, current.get(key))
        roles = sorted(r for r in set(a) | set(b) if a.get(r) != b.get(r))
        return "the " + " and ".join(roles or ["models"]) + " (other weights)"
    flag = _FLAGS.get(key, key)
    return f"{flag} (log: {_value(saved, key)!r}, now: {_value(current, key)!r})"


def check_or_write(log: str | os.PathLike, current: dict, rows: int) -> None:
    """Before a log is created or resumed: write its record, or check that this run would
    add rows made the same way. `rows` is the number of rows the log already holds."""
    path = sidecar(log)
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read the provenance record {path} ({e}).") from None
        diff = differences(saved, current)
        if diff:
            shown = "; ".join(_describe(k, saved, current) for k in diff[:3])
            raise UserError(
                f"{log} was made with other settings, so resuming would mix two experiments: "
                f"{shown}; use the log's settings or choose another --out."
            )
        return
    if rows:
        print(
            f"dsmooth: warning: {log} has {rows} rows but no provenance record; resuming "
            f"without checking its settings and recording this run's in {path.name}.",
            file=sys.stderr,
        )
        current = {**current, "rows_before_record": rows}
    write(path, current)


def check_resume(log: str | os.PathLike, current: dict) -> None:
    """Refuse early (before anything is printed or loaded further) to resume a log that
    was made with other settings; ResultLog checks again when it opens the log."""
    path = sidecar(log)
    if Path(log).is_file() and path.is_file():
        check_or_write(log, current, rows=1)


def write(path: Path, content: dict) -> None:
    write_json(path, content, indent=1, sort_keys=True)


def read(log: str | os.PathLike) -> dict | None:
    """The provenance record of a log, or None (logs from older versions or other code)."""
    path = sidecar(log)
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None

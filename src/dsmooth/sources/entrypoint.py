"""Python entry points `package.module:function` or `path/to/file.py:function`.

For a model that exists only as code: the function (called with no arguments) returns
an `nn.Module`; optional weights (`weights=` option, `--weights`) are loaded into it
from `.safetensors`, or from a `.pt`/`.pth` state dict with `torch.load(weights_only=True)`
(never unpickling arbitrary objects). Importing the module runs its code: name only
code you trust, as with any Python import.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path

from torch import nn

from dsmooth.errors import UserError
from dsmooth.sources.options import SourceOptions

_SPEC = re.compile(r"^(?P<module>[^:]+):(?P<attr>[A-Za-z_][A-Za-z0-9_.]*)$")


def parse(spec: str) -> tuple[str, str] | None:
    """(module or file, attribute) for `a.b:fn` / `dir/file.py:fn`, else None."""
    if "://" in spec:
        return None
    m = _SPEC.match(spec)
    if m is None:
        return None
    module = m.group("module")
    if module.endswith(".py") or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", module):
        return module, m.group("attr")
    return None


def import_target(module: str, attr: str):
    if module.endswith(".py"):
        path = Path(module)
        if not path.is_file():
            raise UserError(f"entry point file {module} does not exist.")
        name = f"dsmooth_user_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception as e:
            del sys.modules[name]
            raise UserError(f"importing {module} failed ({type(e).__name__}: {e}).") from None
    else:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                return None  # not an importable module: maybe another source's spec
            raise UserError(f"importing {module} failed ({e}).") from None
        except Exception as e:
            raise UserError(f"importing {module} failed ({type(e).__name__}: {e}).") from None
    target = mod
    for part in attr.split("."):
        if not hasattr(target, part):
            raise UserError(f"{module} has no attribute {attr!r}.")
        target = getattr(target, part)
    return target


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state dict from safetensors or a weights-only torch file, strictly."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as e:
            raise UserError(f"cannot read weights {path} ({type(e).__name__}: {e}).") from None
    else:
        from dsmooth.models.foreign import load_torch_file

        state = load_torch_file(path)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise UserError(f"{path} does not hold a state dict.")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise UserError(f"the weights in {path} do not fit the model ({first}).") from None


def resolve(spec: str, options: SourceOptions):
    parsed = parse(spec)
    if parsed is None:
        return None
    target = import_target(*parsed)
    if target is None:
        return None
    model = target() if callable(target) and not isinstance(target, nn.Module) else target
    if not isinstance(model, nn.Module):
        raise UserError(f"{spec} must return a torch.nn.Module, got {type(model).__name__}.")
    if options.weights:
        load_weights(model, options.weights)
    return model.to(options.device).eval()

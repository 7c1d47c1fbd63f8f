"""The options of `load_model`, as one typed value that refuses names it does not know.

`load_model(spec, **options)` once handed each source a plain dict that it read with
`.get`, so a misspelt option (`input_rnage=255`) was silently ignored and the model
received other pixels than the user stated. `SourceOptions.from_mapping` refuses an
unknown name and suggests the close one; sources read attributes. The names are listed
once, here: the CLI's flags (cli/commands/source_options.py) and `CertifyJob`'s model
options (runs/job.py) derive theirs from `MODEL_OPTIONS`, and a test checks that the
flags match the fields.

A field left None means "not given": the source that reads it applies its own default
(docs/sources.md). Values are checked where they are used (`InputContract`,
`ClientOptions`, `parse_url`), not here.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsmooth.errors import UserError

if TYPE_CHECKING:
    import torch

    from dsmooth.sources.contract import InputContract

ROLES = ("classifier", "denoiser")


@dataclass(frozen=True)
class SourceOptions:
    """Everything a source may read to load a model (docs/sources.md)."""

    # How the caller uses the model, and the input contract as an object (Python only).
    role: str | None = None  # classifier or denoiser; None loads a classifier, checks no kind
    device: str | torch.device = "cpu"
    contract: InputContract | None = None  # replaces the input_* fields below when given

    # A foreign PyTorch state dict (sources/checkpoint.py, docs/models.md).
    arch: str | None = None
    mean: str | Sequence[float] | None = None
    std: str | Sequence[float] | None = None

    # The input contract (sources/contract.py): [0, 1], auto, RGB, no resize, none, float32.
    input_range: float | None = None
    input_layout: str | None = None
    channel_order: str | None = None
    input_size: str | None = None
    input_mean: str | float | Sequence[float] | None = None
    input_std: str | float | Sequence[float] | None = None
    input_dtype: str | None = None

    # Which input and output, an entry point's weights, a SavedModel's signature.
    input_name: str | None = None
    output_name: str | None = None
    weights: str | Path | None = None
    signature: str | None = None

    # A remote server (sources/remote.py): ClientOptions' defaults apply to those not given.
    protocol: str | None = None
    request_size: int | None = None
    concurrency: int | None = None
    timeout: float | None = None
    retries: int | None = None
    backoff: float | None = None
    max_queries: int | None = None
    token_env: str | None = None
    token_file: str | Path | None = None
    auth_header: str | None = None

    def __post_init__(self):
        if self.role is not None and self.role not in ROLES:
            raise UserError(f"role must be classifier or denoiser, got {self.role!r}.")

    @property
    def as_classifier(self) -> bool:
        """True unless the model is loaded as a denoiser."""
        return self.role != "denoiser"

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> SourceOptions:
        """The options from keyword arguments or a dict; a UserError names any unknown
        key, with the option it most likely meant."""
        unknown = [str(key) for key in options if key not in _NAMES]
        if unknown:
            raise UserError(unknown_options_message(unknown))
        return cls(**options)

    @classmethod
    def of(cls, options: SourceOptions | Mapping[str, Any] | None) -> SourceOptions:
        """`options` as SourceOptions: the contract helpers also take a plain dict, as
        they did before the options were typed."""
        if isinstance(options, SourceOptions):
            return options
        return cls.from_mapping(options or {})


_NAMES = tuple(f.name for f in fields(SourceOptions))

#: Fields a caller sets from how it uses the model, not options a user states by name.
CALLER_FIELDS = ("role", "device", "contract")

#: Every model option by name, in field order: the CLI's flags (by their argparse dest)
#: and `CertifyJob.model_options` take these names.
MODEL_OPTIONS = tuple(name for name in _NAMES if name not in CALLER_FIELDS)

#: The options of a foreign state dict (--arch, --mean, --std, in the CLI's models group).
WEIGHTS_OPTIONS = ("arch", "mean", "std")


def unknown_options_message(unknown: Sequence[str]) -> str:
    """One sentence naming the unknown options, each with its likely intended name."""
    named = []
    for key in unknown:
        close = difflib.get_close_matches(key.replace("-", "_"), _NAMES, n=1)
        named.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    plural = "s" if len(unknown) > 1 else ""
    text = f"unknown model option{plural} {', '.join(named)}"
    if not any("did you mean" in n for n in named):
        text += "; the options are listed in docs/sources.md"
    return text + "."

"""Which output of a multi-output model is the classifier's answer.

Servers and SavedModels return named outputs. The user may name one; otherwise the
only output is taken, or the first of a few conventional names (scores before labels).
"""

from __future__ import annotations

from collections.abc import Mapping

from dsmooth.errors import UserError

#: Output names tried in order when a model has several and the user named none.
PREFERRED = (
    "logits",
    "scores",
    "probabilities",
    "probs",
    "predictions",
    "output",
    "output_0",
    "labels",
    "classes",
)


def pick_output(outputs: Mapping, name: str | None, where: str):
    """The output called `name`, the only one, or a conventional one; else a UserError."""
    if name:
        if name not in outputs:
            raise UserError(
                f"{where} has no output {name!r}; it has {', '.join(map(str, outputs))}."
            )
        return outputs[name]
    if len(outputs) == 1:
        return next(iter(outputs.values()))
    for candidate in PREFERRED:
        if candidate in outputs:
            return outputs[candidate]
    raise UserError(
        f"{where} has several outputs ({', '.join(map(str, outputs))}); name one with "
        "--output-name."
    )

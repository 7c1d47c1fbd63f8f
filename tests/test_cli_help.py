"""Help texts that tell a newcomer every accepted form, and flags only where they work."""

from __future__ import annotations

import pytest

from dsmooth.cli import build_parser
from dsmooth.models.pretrained import list_pretrained


def help_of(command: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return " ".join(sub.choices[command].format_help().split())


@pytest.mark.parametrize(
    "command", ["certify", "predict", "evaluate", "visualize", "test-denoiser"]
)
def test_model_and_data_forms_are_listed(command):
    text = help_of(command)
    for form in ("pretrained:NAME", "ARCH:PATH", "module:function", ".onnx", ".keras", "URL"):
        assert form in text, form
    assert list_pretrained()[0].replace("-", "- ")[:8] in text.replace("-", "- ")
    for form in (
        "FILE.npz:PREFIX",
        "a.npz,b.npz",
        "*SPLIT*.npz",
        "image folder",
        "cifar-10-batches-py",
    ):
        assert form in text, form


def test_remote_client_flags_only_where_a_remote_classifier_can_be_used():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    remote = {"certify", "predict", "evaluate", "visualize", "serve", "test-denoiser"}
    remote |= {"train-denoiser"}  # its target classifier, behind --surrogates
    for name, command in sub.choices.items():
        flags = {s for a in command._actions for s in a.option_strings}
        assert ("--max-queries" in flags) == (name in remote), name
        assert ("--protocol" in flags) == (name in remote), name
        if name in remote:
            assert "--classifier" in flags, name

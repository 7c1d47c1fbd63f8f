"""Architectures: registry, forward shapes, parameter counts, denoiser structure."""

from __future__ import annotations

import pytest
import torch

from dsmooth.errors import UserError
from dsmooth.models import create, list_models, model_kind
from dsmooth.models.normalize import NormalizedClassifier

CLASSIFIERS = ["cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56"]
CLASSIFIERS += ["cifar_resnet110", "cohen_resnet20", "cohen_resnet110", "wrn16_4", "wrn40_2"]
DENOISERS = ["dncnn", "dncnn_wide", "memnet"]


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registry_lists_every_architecture_with_its_kind():
    assert set(DENOISERS) == set(list_models("denoiser"))
    assert set(CLASSIFIERS) <= set(list_models("classifier"))
    assert "wrn28_10" in list_models("classifier")
    assert model_kind("dncnn") == "denoiser"
    assert model_kind("wrn16_4") == "classifier"
    with pytest.raises(UserError, match="unknown architecture"):
        create("resnet9000")


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_forward_shape(name):
    torch.manual_seed(0)
    m = create(name, num_classes=7).eval()
    assert isinstance(m, NormalizedClassifier)
    with torch.no_grad():
        y = m(torch.rand(2, 3, 32, 32))
    assert y.shape == (2, 7)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", DENOISERS)
@pytest.mark.parametrize("size", [(8, 8), (10, 6)])
def test_denoiser_forward_keeps_shape(name, size):
    torch.manual_seed(0)
    m = create(name).eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = m(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize(
    ("name", "expected", "tol"),
    [
        ("cifar_resnet20", 0.27e6, 0.01e6),  # He et al. 2016, Table 6
        ("cifar_resnet32", 0.46e6, 0.01e6),
        ("cifar_resnet44", 0.66e6, 0.01e6),
        ("cifar_resnet56", 0.85e6, 0.01e6),
        ("cifar_resnet110", 1.7e6, 0.05e6),
        ("cohen_resnet110", 1.73e6, 0.01e6),  # option B adds the 1x1 projections
        ("wrn16_4", 2.7e6, 0.1e6),  # Zagoruyko & Komodakis 2016, Table 4
        ("wrn28_10", 36.5e6, 0.1e6),
        ("dncnn", 0.558e6, 0.002e6),  # 17 x 3x3 convs at 64 channels + BN
        ("dncnn_wide", 2.22e6, 0.01e6),
    ],
)
def test_parameter_counts_match_published(name, expected, tol):
    assert abs(n_params(create(name)) - expected) <= tol


def test_dncnn_structure_matches_official_code():
    m = create("dncnn")
    convs = [c for c in m.modules() if isinstance(c, torch.nn.Conv2d)]
    bns = [b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    assert len(convs) == 17
    assert len(bns) == 15
    assert convs[0].bias is not None
    assert all(c.bias is None for c in convs[1:])
    assert {c.out_channels for c in convs[:-1]} == {64}
    assert (
        max(c.out_channels for c in create("dncnn_wide").modules() if hasattr(c, "out_channels"))
        == 128
    )
    # official parameter names, so the paper's checkpoints import unchanged
    keys = set(m.state_dict())
    assert {"dncnn.0.weight", "dncnn.0.bias", "dncnn.2.weight", "dncnn.3.running_mean"} <= keys
    assert "dncnn.47.weight" in keys
    assert "dncnn.48.weight" not in keys


@pytest.mark.parametrize("name", ["dncnn", "dncnn_wide"])
def test_fresh_dncnn_is_identity_and_residual(name):
    """The last conv starts at zero: D(x) = x - 0; after perturbing it, D(x) = x - net(x)."""
    torch.manual_seed(0)
    m = create(name).eval()
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(m(x), x)
        m.dncnn[-1].weight.normal_(0, 0.01)
        assert torch.allclose(m(x), x - m.dncnn(x))


def test_cohen_resnet_matches_the_randomized_smoothing_code():
    m = create("cohen_resnet110")
    keys = set(m.state_dict())
    assert {"net.layer2.0.downsample.0.weight", "net.layer2.0.downsample.1.running_var"} <= keys
    assert "net.fc.weight" in keys
    assert "net.layer1.0.downsample.0.weight" not in keys
    assert m.normalize.std.flatten().tolist() == pytest.approx([0.2023, 0.1994, 0.2010])


def test_memnet_structure_matches_official_code():
    m = create("memnet")
    assert len(m.dense_memory) == 3
    assert all(len(b.recursive_unit) == 6 for b in m.dense_memory)
    # gate i sees 6 short-term outputs + i long-term ones (dense memory)
    assert [b.gate_unit.conv.in_channels for b in m.dense_memory] == [7 * 64, 8 * 64, 9 * 64]
    keys = set(m.state_dict())
    assert "dense_memory.2.recursive_unit.5.relu_conv2.conv.weight" in keys
    assert "feature_extractor.bn.running_var" in keys
    assert "reconstructor.conv.weight" in keys
    torch.manual_seed(0)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        m.eval()
        assert torch.allclose(m(x), x + m.reconstructor(_memnet_body(m, x)))


def _memnet_body(m, x):
    out = m.feature_extractor(x)
    memory = [out]
    for block in m.dense_memory:
        xs = []
        h = out
        for r in block.recursive_unit:
            h = h + r.relu_conv2(r.relu_conv1(h))
            xs.append(h)
        out = block.gate_unit(torch.cat(xs + memory, 1))
        memory.append(out)
    return out


@pytest.mark.parametrize("name", [*DENOISERS, "cifar_resnet20", "wrn16_4"])
def test_gradients_reach_the_input(name):
    torch.manual_seed(0)
    m = create(name).train()
    if name.startswith("dncnn"):
        m.dncnn[-1].weight.data.normal_(0, 0.01)
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    m(x).square().sum().backward()
    assert x.grad is not None
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in m.parameters())


def test_an_unknown_architecture_in_an_arch_path_spec_is_named(tmp_path):
    from dsmooth.models.loading import load, split_spec

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    for spec in (f"nosucharch:{weights}", "nosucharch:/no/such/w.pt"):
        with pytest.raises(UserError, match="unknown architecture 'nosucharch'") as e:
            load(spec)
        assert all(name in str(e.value) for name in list_models())
    # other specs with a colon are not architectures: left to their own sources
    for spec in ("torchvision.models:resnet18", "http://host:8000/m.pt", "models.py:build"):
        assert split_spec(spec) == (spec, None)
    assert split_spec(f"dncnn:{weights}") == (str(weights), "dncnn")

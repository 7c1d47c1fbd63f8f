"""Checkpoints, shipped models and foreign weights: exact round trips, safe loading."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import PickleExploit

import dsmooth
from dsmooth.errors import UserError
from dsmooth.models import create
from dsmooth.models.checkpoint import load_checkpoint, read_config, save_checkpoint
from dsmooth.models.foreign import import_weights
from dsmooth.sources import load_model


def trained_like(name: str, seed: int = 0) -> torch.nn.Module:
    """A model whose weights and BatchNorm statistics are all non-trivial."""
    torch.manual_seed(seed)
    m = create(name)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        m.train()
        m(torch.rand(4, 3, 8, 8))  # moves the running statistics
    return m.eval()


def outputs(m: torch.nn.Module, seed: int = 1) -> torch.Tensor:
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return m(x)


FRESH_PROCESS = """
import sys, numpy as np, torch, dsmooth
torch.set_num_threads(int(sys.argv.pop(1)))  # this process's: summation order is per count
x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
for path, out in zip(sys.argv[1::2], sys.argv[2::2]):
    with torch.no_grad():
        np.save(out, dsmooth.load(path)(x).numpy())
"""


def test_round_trip_in_a_fresh_process_is_exact(tmp_path):
    cases = []
    for name, target in [
        ("dncnn", tmp_path / "dncnn"),
        ("memnet", tmp_path / "memnet.safetensors"),
        ("cifar_resnet20", tmp_path / "r20"),
    ]:
        m = trained_like(name)
        save_checkpoint(m, target, {"architecture": name, "sigma": 0.25, "objective": "mse"})
        cases.append((name, target, outputs(m)))
    argv = []
    for name, target, _ in cases:
        argv += [str(target), str(tmp_path / f"{name}.npy")]
    threads = str(torch.get_num_threads())
    subprocess.run([sys.executable, "-c", FRESH_PROCESS, threads, *argv], check=True, timeout=120)
    for name, _, expected in cases:
        got = torch.from_numpy(np.load(tmp_path / f"{name}.npy"))
        assert torch.equal(got, expected), name


def test_config_records_standard_fields(tmp_path):
    m = create("cifar_resnet20", num_classes=7, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    kwargs = {"num_classes": 7, "mean": [0.5] * 3, "std": [0.25] * 3}
    save_checkpoint(m, tmp_path / "c", {"architecture": "cifar_resnet20", "kwargs": kwargs})
    config = read_config(tmp_path / "c")
    assert config["kind"] == "classifier"
    assert config["num_classes"] == 7
    assert config["normalization"] == {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert config["input_range"] == [0.0, 1.0]
    assert config["dsmooth_version"] == dsmooth.__version__
    loaded = dsmooth.load(tmp_path / "c")
    assert torch.equal(loaded.normalize.std, m.normalize.std)
    assert loaded.dsmooth_config["kwargs"] == kwargs
    d = create("dncnn")
    save_checkpoint(d, tmp_path / "d.safetensors", {"architecture": "dncnn", "sigma": 0.5})
    cd = read_config(tmp_path / "d.safetensors")
    assert cd["kind"] == "denoiser"
    assert cd["sigma"] == 0.5
    assert "num_classes" not in cd


def test_float16_weights_load_as_float32(tmp_path):
    m = trained_like("dncnn")
    save_checkpoint(m, tmp_path / "h", {"architecture": "dncnn"}, dtype=torch.float16)
    size16 = (tmp_path / "h" / "model.safetensors").stat().st_size
    save_checkpoint(m, tmp_path / "f", {"architecture": "dncnn"})
    assert size16 < 0.6 * (tmp_path / "f" / "model.safetensors").stat().st_size
    loaded, _ = load_checkpoint(tmp_path / "h")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    a, b = outputs(loaded), outputs(m)
    assert not torch.equal(a, b)
    assert (a - b).abs().max() <= 0.05 * b.abs().max()


def test_checkpoint_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError):
        dsmooth.load(bad)
    save_checkpoint(create("dncnn"), tmp_path / "ck", {"architecture": "dncnn"})
    (tmp_path / "ck" / "config.json").write_text(json.dumps({"architecture": "nonesuch"}))
    with pytest.raises(UserError, match="unknown architecture"):
        dsmooth.load(tmp_path / "ck")
    save_checkpoint(create("dncnn"), tmp_path / "ck2", {"architecture": "dncnn"})
    with pytest.raises(UserError, match="do not apply"):
        dsmooth.load(tmp_path / "ck2", mean="imagenet")
    with pytest.raises(UserError, match="cannot load"):
        dsmooth.load(tmp_path / "nothing-here")


# ------------------------------------------------------------------------- pretrained


def test_pretrained_registry_with_a_temporary_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("DSMOOTH_PRETRAINED_PATH", str(tmp_path))
    m = trained_like("dncnn")
    save_checkpoint(m, tmp_path / "test-dncnn", {"architecture": "dncnn", "sigma": 0.25})
    (tmp_path / "test-dncnn" / "MODEL_CARD.md").write_text("# test-dncnn\nA test entry.\n")
    (tmp_path / "not-a-model").mkdir()
    assert "test-dncnn" in dsmooth.list_pretrained()
    assert "not-a-model" not in dsmooth.list_pretrained()
    expected = outputs(m)
    assert torch.equal(outputs(dsmooth.pretrained("test-dncnn")), expected)
    assert torch.equal(outputs(dsmooth.load("test-dncnn")), expected)
    assert torch.equal(outputs(load_model("pretrained:test-dncnn", role="denoiser")), expected)
    assert dsmooth.pretrained("test-dncnn").dsmooth_config["sigma"] == 0.25
    from dsmooth.models.pretrained import model_card

    assert "A test entry" in model_card("test-dncnn")
    with pytest.raises(UserError, match=r"no pretrained model named 'nope'.*test-dncnn"):
        dsmooth.pretrained("nope")
    with pytest.raises(UserError, match="no pretrained model"):
        load_model("pretrained:nope")


def test_package_ships_a_pretrained_folder():
    folder = Path(dsmooth.__file__).parent / "pretrained"
    assert folder.is_dir()
    assert (folder / "README.md").is_file()
    for name in dsmooth.list_pretrained():  # every shipped entry is documented and loads
        assert (folder / name / "MODEL_CARD.md").is_file()


# ---------------------------------------------------------------------- foreign weights


def foreign_layouts(m: torch.nn.Module) -> dict[str, dict]:
    """The same weights as other code bases save them."""
    net = {k[len("net.") :]: v for k, v in m.state_dict().items() if k.startswith("net.")}
    return {
        "plain": dict(net),
        "dataparallel_nested": {"state_dict": {f"module.{k}": v for k, v in net.items()}},
        "cohen_sequential": {
            "arch": "x",
            "state_dict": {f"1.module.{k}": v for k, v in net.items()},
        },
    }


@pytest.mark.parametrize("layout", ["plain", "dataparallel_nested", "cohen_sequential"])
def test_foreign_state_dicts_import_exactly(tmp_path, layout):
    m = trained_like("cifar_resnet20")
    obj = foreign_layouts(m)[layout]
    if "arch" in obj:
        obj = {**obj, "arch": "my_resnet", "epoch": 90}
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    got = dsmooth.load(f"cifar_resnet20:{path}")
    assert torch.equal(outputs(got), outputs(m))
    assert got.dsmooth_config["source"]["format"] == "pytorch state dict"
    same = load_model(str(path), role="classifier", arch="cifar_resnet20")
    assert torch.equal(outputs(same), outputs(m))


def test_official_denoiser_checkpoint_names_its_architecture(tmp_path):
    m = trained_like("dncnn")
    torch.save(
        {"epoch": 90, "arch": "cifar_dncnn", "state_dict": m.state_dict()},
        tmp_path / "c.pth.tar",
    )
    path = tmp_path / "checkpoint.pth"
    (tmp_path / "c.pth.tar").rename(path)
    got = dsmooth.load(path)
    assert got.dsmooth_config["architecture"] == "dncnn"
    assert got.dsmooth_config["source"]["epoch"] == 90
    assert torch.equal(outputs(got), outputs(m))


def test_mean_std_options_set_the_normalisation(tmp_path):
    m = trained_like("cifar_resnet20")
    torch.save(foreign_layouts(m)["plain"], tmp_path / "w.th")
    a = dsmooth.load(tmp_path / "w.th", arch="cifar_resnet20", mean="imagenet", std="imagenet")
    assert torch.allclose(a.normalize.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert a.dsmooth_config["normalization"]["std"] == [0.229, 0.224, 0.225]
    b = dsmooth.load(
        tmp_path / "w.th", arch="cifar_resnet20", mean="0.5,0.5,0.5", std="0.5 0.5 0.5"
    )
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(b(x), b.net((x - 0.5) / 0.5))
    with pytest.raises(UserError, match="std"):
        dsmooth.load(tmp_path / "w.th", arch="cifar_resnet20", std="0,1,1")
    torch.save(create("dncnn").state_dict(), tmp_path / "d.pt")
    with pytest.raises(UserError, match="denoiser"):
        dsmooth.load(tmp_path / "d.pt", arch="dncnn", mean="imagenet")


def test_num_classes_is_read_from_the_weights(tmp_path):
    m = create("cifar_resnet20", num_classes=100)
    torch.save(foreign_layouts(m)["plain"], tmp_path / "w.pt")
    got = dsmooth.load(f"cifar_resnet20:{tmp_path / 'w.pt'}")
    assert got.dsmooth_config["num_classes"] == 100
    assert outputs(got).shape == (2, 100)


def test_mismatched_foreign_weights_are_user_errors(tmp_path):
    torch.save(foreign_layouts(create("cifar_resnet56"))["plain"], tmp_path / "w.pt")
    with pytest.raises(UserError, match="name its architecture"):
        dsmooth.load(tmp_path / "w.pt")
    with pytest.raises(UserError, match=r"do not fit cifar_resnet20.*unexpected"):
        dsmooth.load(tmp_path / "w.pt", arch="cifar_resnet20")
    with pytest.raises(UserError, match="do not fit wrn16_4"):
        dsmooth.load(tmp_path / "w.pt", arch="wrn16_4")
    with pytest.raises(UserError, match="unknown architecture"):
        dsmooth.load(tmp_path / "w.pt", arch="resnet9000")
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="safely"):
        dsmooth.load(tmp_path / "junk.pth", arch="cifar_resnet20")


def test_pickled_objects_are_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    torch.save(
        {"state_dict": {"w": torch.zeros(1)}, "x": PickleExploit(Path.touch, marker)},
        tmp_path / "e.pt",
    )
    with pytest.raises(UserError, match="safely"):
        dsmooth.load(tmp_path / "e.pt", arch="dncnn")
    assert not marker.exists()
    torch.save(create("dncnn"), tmp_path / "whole_model.pt")  # a pickled nn.Module
    with pytest.raises(UserError, match="state_dict"):
        dsmooth.load(tmp_path / "whole_model.pt", arch="dncnn")


def test_torchscript_still_resolves_through_torchscript(tmp_path):
    m = trained_like("cifar_resnet20")
    torch.jit.save(torch.jit.trace(m, torch.rand(1, 3, 16, 16)), tmp_path / "model.pt")
    got = load_model(str(tmp_path / "model.pt"), role="classifier")
    assert isinstance(got, torch.jit.ScriptModule)
    assert torch.allclose(outputs(got), outputs(m), atol=1e-5)
    with pytest.raises(UserError, match="TorchScript"):
        import_weights(tmp_path / "model.pt", arch="cifar_resnet20")


def test_foreign_safetensors_without_config(tmp_path):
    from safetensors.torch import save_file

    m = trained_like("dncnn")
    save_file(
        {k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "w.safetensors")
    )
    with pytest.raises(UserError, match="name its architecture"):
        dsmooth.load(tmp_path / "w.safetensors")
    assert torch.equal(outputs(dsmooth.load(f"dncnn:{tmp_path / 'w.safetensors'}")), outputs(m))


def _run(command_module, argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser()
    command_module.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_import_weights_command_writes_a_checkpoint(tmp_path, capsys):
    from dsmooth.cli.commands import import_weights as cmd

    m = trained_like("cifar_resnet20")
    torch.save(foreign_layouts(m)["dataparallel_nested"], tmp_path / "w.th")
    out = tmp_path / "ck"
    argv = ["import-weights", str(tmp_path / "w.th"), "--arch", "cifar_resnet20"]
    argv += ["--mean", "cifar10", "--std", "cifar10", "--out", str(out)]
    assert _run(cmd, argv) == 0
    assert "cifar_resnet20" in capsys.readouterr().out
    config = read_config(out)
    assert config["source"]["file"] == "w.th"
    assert len(config["source"]["sha256"]) == 64
    assert torch.equal(outputs(dsmooth.load(out)), outputs(m))
    with pytest.raises(UserError, match="exists"):
        _run(cmd, argv)
    assert _run(cmd, [*argv, "--force", "--half", "--note", "from a test"]) == 0
    assert read_config(out).note == "from a test"


def test_role_mismatch_is_a_user_error(tmp_path):
    save_checkpoint(create("cifar_resnet20"), tmp_path / "clf", {"architecture": "cifar_resnet20"})
    save_checkpoint(create("dncnn"), tmp_path / "den", {"architecture": "dncnn"})
    with pytest.raises(UserError, match=r"is a classifier .*not a denoiser"):
        load_model(str(tmp_path / "clf"), role="denoiser")
    with pytest.raises(UserError, match=r"is a denoiser .*not a classifier"):
        load_model(str(tmp_path / "den"), role="classifier")
    assert load_model(str(tmp_path / "den"), role="denoiser").dsmooth_config["kind"] == "denoiser"


def test_weights_mixed_from_two_saves_are_caught(tmp_path):
    """The config names its weights' checksum: new weights under an old config (files
    mixed by hand, or a save cut off by dsmooth 0.2) are refused when loaded, never used."""
    from torch import nn

    from dsmooth.models.checkpoint import CONFIG, WEIGHTS, WEIGHTS_SHA256

    first, second = tmp_path / "first", tmp_path / "second"
    for seed, out in ((0, first), (1, second)):
        torch.manual_seed(seed)
        model = create("dncnn", depth=3, n_channels=4)
        save_checkpoint(model, out, DNCNN_CONFIG)
    config = json.loads((first / CONFIG).read_text())
    assert len(config[WEIGHTS_SHA256]) == 64
    load_checkpoint(first)
    (first / WEIGHTS).write_bytes((second / WEIGHTS).read_bytes())  # the mixed state
    with pytest.raises(UserError, match="mixed from two saves"):
        load_checkpoint(first)
    del config[WEIGHTS_SHA256]  # a checkpoint from before the checksum: loads as it did
    (first / CONFIG).write_text(json.dumps(config))
    assert isinstance(load_checkpoint(first)[0], nn.Module)
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file left behind


DNCNN_CONFIG = {"architecture": "dncnn", "kwargs": {"depth": 3, "n_channels": 4}}


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_checkpoint_folder_is_replaced_whole(tmp_path, monkeypatch, exchange):
    """Saving over a checkpoint swaps in a new folder: the files it does not write (a
    model card, a training state) stay, and a save that fails leaves the old one whole."""
    from dsmooth import _io
    from dsmooth.models import checkpoint

    if not exchange:  # a system without RENAME_EXCHANGE
        monkeypatch.setattr(_io, "_exchange", lambda _a, _b: False)
    out = tmp_path / "den"
    torch.manual_seed(0)
    save_checkpoint(create("dncnn", depth=3, n_channels=4), out, DNCNN_CONFIG)
    (out / "MODEL_CARD.md").write_text("card")
    (out / "notes").mkdir()
    (out / "notes" / "a.txt").write_text("a")
    old_weights = (out / checkpoint.WEIGHTS).read_bytes()

    torch.manual_seed(1)
    new = create("dncnn", depth=3, n_channels=4)
    save_checkpoint(new, out, DNCNN_CONFIG)
    assert (out / checkpoint.WEIGHTS).read_bytes() != old_weights
    assert (out / "MODEL_CARD.md").read_text() == "card"
    assert (out / "notes" / "a.txt").read_text() == "a"
    loaded, _ = load_checkpoint(out)
    pairs = zip(loaded.state_dict().values(), new.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    before = sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file())

    def broken(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    # the disk fills after the new weights are written, before the config is
    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", broken)
        with pytest.raises(OSError, match="No space"):
            save_checkpoint(create("dncnn", depth=3, n_channels=4), out, DNCNN_CONFIG)
    after = sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file())
    assert after == before  # the old checkpoint, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["den"]  # nothing left beside it


def test_a_replaced_folder_keeps_its_mode_its_link_and_the_users_files(tmp_path):
    from dsmooth.models import checkpoint

    real = tmp_path / "real" / "ck"
    save_checkpoint(create("dncnn", depth=3, n_channels=4), real, DNCNN_CONFIG)
    real.chmod(0o750)
    (real / "keep.tmp").write_text("mine")  # a user's file, not a temporary of ours
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    save_checkpoint(create("dncnn", depth=3, n_channels=4), link, DNCNN_CONFIG)
    assert link.is_symlink()  # replaced where it points
    assert (real / "keep.tmp").read_text() == "mine"
    assert (real.stat().st_mode & 0o777) == 0o750
    assert load_checkpoint(link)[1]["architecture"] == "dncnn"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
    assert sorted(p.name for p in real.parent.iterdir()) == ["ck"]
    fresh = tmp_path / "fresh"
    save_checkpoint(create("dncnn", depth=3, n_channels=4), fresh, DNCNN_CONFIG)
    assert (fresh.stat().st_mode & 0o777) == (0o777 & ~checkpoint_umask())
    assert (fresh / checkpoint.CONFIG).is_file()


def checkpoint_umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_folder_that_cannot_be_swapped_gets_its_files_one_by_one(tmp_path, monkeypatch):
    """A mount point (say a container volume) cannot be renamed: weights, then config,
    each replaced whole, as before the folder swap."""
    import os

    from dsmooth.models import checkpoint

    out = tmp_path / "volume"
    save_checkpoint(create("dncnn", depth=3, n_channels=4), out, DNCNN_CONFIG)
    inode = out.stat().st_ino
    moved = []
    real_replace = os.replace
    monkeypatch.setattr(os.path, "ismount", lambda p: str(p) == str(out))
    monkeypatch.setattr(
        os, "replace", lambda a, b: (moved.append(Path(b).name), real_replace(a, b))[1]
    )
    torch.manual_seed(3)
    new = create("dncnn", depth=3, n_channels=4)
    save_checkpoint(new, out, DNCNN_CONFIG)
    assert out.stat().st_ino == inode  # the same folder, its files replaced
    assert moved == [checkpoint.WEIGHTS, checkpoint.CONFIG]
    loaded, _ = load_checkpoint(out)
    pairs = zip(loaded.state_dict().values(), new.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert sorted(p.name for p in out.iterdir()) == [checkpoint.CONFIG, checkpoint.WEIGHTS]


def test_the_fallback_swap_puts_the_old_folder_back_when_it_fails(tmp_path, monkeypatch):
    import os

    from dsmooth import _io

    out = tmp_path / "ck"
    out.mkdir()
    (out / "a").write_text("old")
    monkeypatch.setattr(_io, "_exchange", lambda _a, _b: False)
    real_rename = os.rename

    def rename(a, b):
        if Path(b) == out and ".tmp" in Path(a).name:
            raise KeyboardInterrupt  # a second Ctrl-C between the two renames
        real_rename(a, b)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt), _io.replacing_folder(out) as tmp:
        (tmp / "a").write_text("new")
    assert (out / "a").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


# ------------------------------------------------------------------ the typed config

#: A small DnCNN's config with every kind of value a dsmooth config holds: typed fields,
#: nulls, a nested recipe and metrics, tuples (written as lists) and keys dsmooth does not
#: know (kept as they are).
RICH_CONFIG = {
    "architecture": "dncnn",
    "kwargs": {"depth": 3, "n_channels": 4},
    "sigma": 0.25,
    "objective": "mse",
    "classifier": None,
    "surrogates": ["a", "b"],
    "init": None,
    "dataset": ["train.npz"],
    "epochs": 1.5,
    "precision": "fp32",
    "metrics": {"val_mse": 0.01, "step": 3, "val_noisy_acc": float("nan")},
    "recipe": {"lr": 1e-3, "milestones": (0.5, 0.75), "init": None, "nested": {"x": [1, 2]}},
    "note": "made in a test",
    "my_tool": {"run": 7, "tags": ["x"]},
    "empty": None,
}


def old_config_text(model, config: dict, weights: Path | None) -> str:
    """config.json (or the metadata) exactly as dsmooth 0.2's save_checkpoint wrote it."""
    from dsmooth.models.checkpoint import describe, file_sha256

    config = {**describe(model, config["architecture"]), **config}
    config["dsmooth_version"] = dsmooth.__version__
    if weights is None:
        return json.dumps(config, indent=2, sort_keys=True)
    config = {**config, "weights_sha256": file_sha256(weights)}
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("dncnn", RICH_CONFIG),
        ("dncnn", DNCNN_CONFIG),
        (
            "cifar_resnet20",
            {
                "architecture": "cifar_resnet20",
                "kwargs": {"num_classes": 7, "mean": (0.5, 0.5, 0.5), "std": [0.25] * 3},
                "sigma": 0.0,
                "source": {"file": "w.th", "best_prec1": 91.5},
            },
        ),
    ],
    ids=["rich", "plain", "classifier"],
)
def test_saving_writes_the_same_json_as_before(tmp_path, name, config):
    from safetensors import safe_open

    kwargs = config.get("kwargs", {})
    model = create(name, **kwargs)
    save_checkpoint(model, tmp_path / "ck", config)
    written = (tmp_path / "ck" / "config.json").read_text()
    assert written == old_config_text(model, config, tmp_path / "ck" / "model.safetensors")
    save_checkpoint(model, tmp_path / "one.safetensors", config)
    with safe_open(str(tmp_path / "one.safetensors"), framework="pt") as f:
        assert f.metadata()["dsmooth_config"] == old_config_text(model, config, None)
    # and what loads is what was written, key for key, nulls and unknown keys included
    # (compared as JSON text: a NaN metric is not equal to itself)
    loaded = load_checkpoint(tmp_path / "ck")[1]
    assert json.dumps(dict(loaded), indent=2, sort_keys=True) + "\n" == written
    again = tmp_path / "again"
    save_checkpoint(model, again, load_checkpoint(tmp_path / "ck")[1])  # a config loaded
    assert (again / "config.json").read_text() == written


def write_like_dsmooth_0_2(model, path: Path, config: dict) -> None:
    """A checkpoint as dsmooth 0.1/0.2 wrote it: no weights checksum, its own version."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    text = json.dumps(config, indent=2, sort_keys=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path), metadata={"dsmooth_config": text})
    else:
        path.mkdir()
        save_file(state, str(path / "model.safetensors"))
        (path / "config.json").write_text(text)  # 0.1 wrote no final newline


OLD_DENOISER_CONFIG = {
    "architecture": "dncnn",
    "dsmooth_version": "0.1.0",
    "epochs": 1.0,
    "init": None,
    "input_range": [0.0, 1.0],
    "kind": "denoiser",
    "kwargs": {"depth": 3, "n_channels": 4},
    "metrics": {"epoch": 1, "val_psnr": 22.4},
    "objective": "mse",
    "recipe": {"arch": "dncnn", "sigma": 0.25, "milestones": [0.5, 0.75]},
    "sigma": 0.25,
    "surrogates": [],
}


@pytest.mark.parametrize("target", ["folder", "one.safetensors"])
def test_a_checkpoint_written_before_the_typed_config_loads(tmp_path, target):
    from dsmooth.models.config import ModelConfig
    from dsmooth.pipeline.compose import trained_sigma

    torch.manual_seed(0)
    model = create("dncnn", depth=3, n_channels=4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    write_like_dsmooth_0_2(model, tmp_path / target, OLD_DENOISER_CONFIG)
    loaded, config = load_checkpoint(tmp_path / target)
    assert torch.equal(outputs(loaded), outputs(model.eval()))
    assert isinstance(config, ModelConfig)
    assert config == OLD_DENOISER_CONFIG
    assert config.weights_sha256 is None
    assert (config.kind, config.sigma, config.kwargs) == (
        "denoiser",
        0.25,
        {"depth": 3, "n_channels": 4},
    )
    assert trained_sigma(dsmooth.load(tmp_path / target)) == 0.25


def test_dsmooth_config_reads_like_the_dict_it_was(tmp_path):
    """What user code did with the plain dict config of dsmooth 0.2 still works."""
    save_checkpoint(trained_like("dncnn"), tmp_path / "d", {"architecture": "dncnn", "sigma": 0.5})
    config = dsmooth.load(tmp_path / "d").dsmooth_config
    as_written = json.loads((tmp_path / "d" / "config.json").read_text())
    assert config["architecture"] == "dncnn"
    assert config.get("sigma") == 0.5
    assert config.get("num_classes") is None
    assert config.get("nope", "default") == "default"
    assert "kind" in config
    assert "num_classes" not in config
    assert list(config) == sorted(as_written)
    assert dict(config.items()) == as_written
    assert json.loads(json.dumps(dict(config))) == as_written
    assert config == as_written
    assert {**config, "note": "x"} == {**as_written, "note": "x"}
    with pytest.raises(KeyError):
        config["num_classes"]
    with pytest.raises(TypeError):
        config["sigma"] = 1.0  # read-only: a config is what the checkpoint says
    config["input_range"].append(2.0)  # a copy: the config itself is unchanged
    assert config["input_range"] == [0.0, 1.0]
    # typed attributes beside the mapping
    assert config.sigma == 0.5
    assert config.kind == "denoiser"
    assert config.input_range == (0.0, 1.0)


def test_a_dict_attached_by_hand_still_gives_the_training_sigma():
    from dsmooth.pipeline.compose import trained_sigma

    denoiser = create("dncnn", depth=3, n_channels=4)
    denoiser.dsmooth_config = {"kind": "denoiser", "sigma": 0.5}
    assert trained_sigma(denoiser) == 0.5
    denoiser.dsmooth_config = {"kind": "denoiser", "sigma": "0.5"}
    assert trained_sigma(denoiser) is None


#: (field, bad value, words the error must say about what the field must be)
MALFORMED = [
    ("architecture", 3, "registry name"),
    ("architecture", "", "registry name"),
    ("kind", "denoisr", "'classifier' or 'denoiser'"),
    ("sigma", "0.25", "number >= 0"),
    ("sigma", -0.25, "number >= 0"),
    ("sigma", True, "number >= 0"),
    ("kwargs", [3, 4], "JSON object"),
    ("num_classes", "10", "whole number"),
    ("num_classes", 0, "whole number"),
    ("input_range", [1.0, 0.0], "low < high"),
    ("normalization", {"mean": [0.5], "std": [0.0]}, "std > 0"),
    ("normalization", {"mean": [0.5, 0.5], "std": [0.2]}, "equal-length"),
    ("weights_sha256", "abc", "sha256"),
    ("dataset", 5, "string or a list of strings"),
    ("surrogates", "pretrained:x", "list of strings"),
    ("metrics", [0.5], "JSON object"),
    ("epochs", "1", "number >= 0"),
]


@pytest.mark.parametrize(("key", "value", "expected"), MALFORMED, ids=lambda v: repr(v)[:20])
def test_a_malformed_config_is_one_user_error_naming_the_field(tmp_path, key, value, expected):
    import re

    folder = tmp_path / "ck"
    save_checkpoint(create("dncnn", depth=3, n_channels=4), folder, DNCNN_CONFIG)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, key: value}))
    for load in (load_checkpoint, read_config, dsmooth.load):
        with pytest.raises(UserError) as caught:
            load(folder)
        message = str(caught.value)
        assert message.startswith(f"{folder}: config field '{key}' must be ")
        assert expected in message
        assert "\n" not in message  # one sentence
        assert ". " not in message
    # writing the same config is refused too, and nothing is written
    saving = re.escape(f"{tmp_path / 'new'} (being saved): config field '{key}' must be ")
    with pytest.raises(UserError, match=saving + ".*" + re.escape(expected)):
        save_checkpoint(
            create("dncnn", depth=3, n_channels=4),
            tmp_path / "new",
            {**DNCNN_CONFIG, key: value},
        )
    assert not (tmp_path / "new").exists()


def test_configs_that_do_not_fit_are_refused(tmp_path):
    folder = tmp_path / "ck"
    save_checkpoint(create("dncnn", depth=3, n_channels=4), folder, DNCNN_CONFIG)
    config = json.loads((folder / "config.json").read_text())
    for bad, words in [
        ([config], "not a JSON object"),
        ({**config, "kind": "classifier"}, "says it is a classifier, but dncnn is a denoiser"),
        ({k: v for k, v in config.items() if k != "architecture"}, "names no 'architecture'"),
        ({**config, "kwargs": {"depth": "three"}}, "kwargs do not fit dncnn"),
    ]:
        (folder / "config.json").write_text(json.dumps(bad))
        with pytest.raises(UserError, match=words):
            load_checkpoint(folder)
    single = tmp_path / "one.safetensors"
    save_checkpoint(create("dncnn", depth=3, n_channels=4), single, DNCNN_CONFIG)
    from safetensors.torch import load_file, save_file

    save_file(
        load_file(str(single)), str(single), metadata={"dsmooth_config": '{"architecture": 1}'}
    )
    with pytest.raises(UserError, match=f"{single}: config field 'architecture'"):
        dsmooth.load(single)  # a malformed config is not taken for foreign weights
    with pytest.raises(UserError, match="'kind' says 'classifier', but dncnn is a denoiser"):
        save_checkpoint(
            create("dncnn"), tmp_path / "k", {"architecture": "dncnn", "kind": "classifier"}
        )
    with pytest.raises(UserError, match="'recipe' cannot be written as JSON"):
        save_checkpoint(
            create("dncnn"), tmp_path / "j", {"architecture": "dncnn", "recipe": {"p": Path()}}
        )
    assert not (tmp_path / "k").exists()
    assert not (tmp_path / "j").exists()


def test_every_typed_field_is_read_and_written():
    """A field added to ModelConfig without a reader would be dropped from saved configs."""
    from dataclasses import fields

    from dsmooth.models.config import _PARSERS, ModelConfig

    assert [f.name for f in fields(ModelConfig)] == [*_PARSERS, "extra", "nulls"]
    config = ModelConfig.from_dict(RICH_CONFIG, where="test")
    as_json = json.dumps(RICH_CONFIG, sort_keys=True)
    assert json.dumps(config.to_dict(), sort_keys=True) == as_json
    assert config.extra == {"my_tool": {"run": 7, "tags": ["x"]}, "empty": None}
    assert config.nulls == {"classifier", "init"}
    with pytest.raises(ValueError, match="fields"):
        ModelConfig(architecture="dncnn", extra={"sigma": 0.1})

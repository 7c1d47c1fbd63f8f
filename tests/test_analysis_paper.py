"""`dsmooth analyze` reproduces the tables of Salman et al. 2020 from their released logs.

Expected rows are the paper's Table 2 (CIFAR-10, ResNet-110) and Table 1 (ImageNet,
ResNet-18/34/50), as written by the authors' `code/analyze.py` into `analysis/latex/`
of microsoft/denoised-smoothing. Each row is the best certified accuracy over the
listed logs (sigmas and denoisers) with the clean accuracy of the chosen log in
parentheses, in percent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dsmooth.analysis.tables import PAPER_RADII, LogWarning, analyze, percent, read_log
from dsmooth.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared"
LOGS = SHARED / "fixtures" / "paper-logs" / "certify"
CIFAR = LOGS / "cifar10"
IMAGENET = LOGS / "imagenet"
SIGMAS = ("0.12", "0.25", "0.50", "1.00")

pytestmark = pytest.mark.skipif(not LOGS.is_dir(), reason="paper logs not available")


def cifar_stab(classifier: str, settings: int) -> list[Path]:
    stem = "MODEL_resnet110_90epochs_DENOISER_cifar10_smoothness_obj_adamThenSgd"
    return [
        CIFAR / "stab_obj" / f"{stem}_{e}_{classifier}_{d}" / f"noise_{s}/test_N10000/sigma_{s}"
        for s in SIGMAS
        for e in range(1, settings + 1)
        for d in ("dncnn", "dncnn_wide", "memnet")
    ]


def imagenet_stab(arch: str, surrogates: list[str]) -> list[Path]:
    return [
        IMAGENET
        / f"MODEL_{arch}_DENOISER_imagenet_smoothness_obj_adam_1e-5_20epochs"
        / f"{b}/dncnn/noise_{s}/test_N10000/sigma_{s}"
        for b in surrogates
        for s in SIGMAS
    ]


TABLE2 = {  # CIFAR-10, ResNet-110
    "no denoiser": (
        [
            CIFAR / f"no_denoiser/MODEL_resnet110_90epochs/noise_0.00/test_N10000/sigma_{s}"
            for s in SIGMAS
        ],
        "(10)7 (9)3 (9)0 (16)0 (16)0 (16)0",
    ),
    "Stab, white-box (full access)": (
        cifar_stab("resnet110_90epochs", 5),
        "(72)56 (62)41 (62)28 (44)19 (42)16 (44)13",
    ),
    "Stab, query access (14 surrogates)": (
        cifar_stab("multi_classifiers", 6),
        "(81)45 (68)20 (21)15 (21)13 (16)11 (16)10",
    ),
    "Gaussian-trained classifier (Cohen et al.)": (
        [
            CIFAR / f"no_denoiser/MODEL_resnet110_90epochs/noise_{s}/test_N10000/sigma_{s}"
            for s in SIGMAS
        ],
        "(77)59 (77)45 (65)31 (65)21 (45)18 (45)13",
    ),
}

TABLE1 = {  # ImageNet
    "ResNet-50 no denoiser": (
        [IMAGENET / f"MODEL_resnet50/noise_0.00/test_N10000/sigma_{s}" for s in SIGMAS],
        "(49)32 (12)4 (12)2 (0)0 (0)0 (0)0",
    ),
    "ResNet-50 Stab+MSE full access": (
        imagenet_stab("resnet50", ["resnet50"]),
        "(67)50 (60)33 (60)20 (38)14 (38)11 (38)6",
    ),
    "ResNet-50 Stab+MSE query access": (
        imagenet_stab("resnet50", ["resnet18", "resnet34"]),
        "(69)48 (56)31 (56)19 (34)12 (34)7 (30)4",
    ),
    "ResNet-50 Gaussian-trained": (
        [IMAGENET / f"MODEL_resnet50/noise_{s}/test_N10000/sigma_{s}" for s in SIGMAS[1:]],
        "(70)62 (70)52 (62)45 (62)39 (62)34 (50)29",
    ),
    "ResNet-34 no denoiser": (
        [IMAGENET / f"MODEL_resnet34/noise_0.00/test_N10000/sigma_{s}" for s in SIGMAS],
        "(44)26 (5)2 (5)1 (0)0 (44)0 (44)0",
    ),
    "ResNet-34 Stab+MSE full access": (
        imagenet_stab("resnet34", ["resnet34"]),
        "(64)47 (55)32 (55)19 (35)12 (35)8 (16)4",
    ),
    "ResNet-18 Stab+MSE query access": (
        imagenet_stab("resnet18", ["resnet34", "resnet50"]),
        "(60)42 (50)26 (50)14 (28)7 (28)5 (28)3",
    ),
    "ResNet-18 no denoiser": (
        [IMAGENET / f"MODEL_resnet18/noise_0.00/test_N10000/sigma_{s}" for s in SIGMAS],
        "(37)18 (5)1 (5)1 (0)0 (0)0 (0)0",
    ),
}


def envelope_row(paths: list[Path]) -> str:
    seen: list[str] = []
    report = analyze(groups=[("row", paths)], radii=PAPER_RADII, envelope=True, warn=seen.append)
    assert all("holds no rows" in w for w in seen), seen  # some released logs are empty
    ((_, cells),) = report.certified_rows()
    return " ".join(report.cell_text(c, 0) for c in cells)


@pytest.mark.parametrize("row", list(TABLE2))
def test_table2_cifar10(row):
    paths, expected = TABLE2[row]
    assert envelope_row(paths) == expected


@pytest.mark.parametrize("row", list(TABLE1))
def test_table1_imagenet(row):
    paths, expected = TABLE1[row]
    assert envelope_row(paths) == expected


def test_cli_prints_the_table2_rows(capsys):
    no_denoiser = f"{CIFAR}/no_denoiser/MODEL_resnet110_90epochs/noise_0.00/test_N10000/sigma_*"
    stab = f"{CIFAR}/stab_obj/*adamThenSgd_[1-5]_resnet110_90epochs_*/noise_*/test_N10000/sigma_*"
    argv = ["analyze", "--envelope", "--radii", "0.25:1.5:0.25"]
    argv += ["--label", f"No denoiser={no_denoiser}", "--label", f"Stab={stab}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| No denoiser | (10)7 | (9)3 | (9)0 | (16)0 | (16)0 | (16)0 |" in out
    assert "| Stab | (72)56 | (62)41 | (62)28 | (44)19 | (42)16 | (44)13 |" in out
    assert main([*argv, "--format", "latex"]) == 0
    assert r"$^{(72)}$56 & $^{(62)}$41 & $^{(62)}$28" in capsys.readouterr().out


def test_paper_curves(tmp_path):
    from dsmooth.analysis.plots import plot_curves

    report = analyze(
        groups=[
            ("No denoiser", TABLE2["no denoiser"][0]),
            ("Stab", cifar_stab("resnet110_90epochs", 5)),
        ],
        radii=[0.0],
        envelope=True,
    )
    fig = plot_curves(report.series, tmp_path / "curves.png")
    (ax,) = fig.axes
    no_denoiser, stab = ax.get_lines()
    assert ax.get_ylim() == (0.0, 1.0)
    assert ax.get_xlim()[0] == 0.0
    assert 3.0 <= ax.get_xlim()[1] <= 3.5  # sigma=1 radii reach ~3.2
    x, y = stab.get_data()
    assert y[0] == max(log.clean_accuracy for log in report.series[1].logs)
    i = int(np.argmin(np.abs(x - 0.25)))
    assert abs(x[i] - 0.25) < 1e-3
    assert percent(y[i]) == "56"  # Table 2: (72)56 at 0.25
    clean = [log.clean_accuracy for log in report.series[0].logs]
    assert no_denoiser.get_data()[1].max() == max(clean)  # 16%, as the paper's parentheses
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_released_logs_with_duplicates_and_empty_logs_are_reported():
    dup = (
        IMAGENET
        / "MODEL_resnet18_DENOISER_imagenet_dncnn_5epoch_lr1e-4/noise_0.25/test_N10000/sigma_0.25"
    )
    with pytest.warns(LogWarning, match=r"14 duplicate row\(s\)"):
        log = read_log(dup)
    assert len(log) == 500
    assert len(set(log.idx.tolist())) == 500
    empty = [p for p in cifar_stab("multi_classifiers", 6) if p.stat().st_size < 100]
    assert empty
    assert len(read_log(empty[0], warn=lambda _message: None)) == 0

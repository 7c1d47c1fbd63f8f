"""`dsmooth demo`: the main job on the embedded default, in minutes, on a CPU.

Denoised smoothing of a classifier we did not train: the shipped third-party CIFAR-10
ResNet-20 (akamaster, BSD-2) without a denoiser and with the two shipped DnCNN denoisers
trained for it at sigma = 0.25 (MSE objective; Stab fine-tuned from it), certified on
CIFAR-10 test images bundled with the package (one in every 20, the paper's protocol;
JPEG-decoded). Small n keeps it to a few minutes on two cores, and caps the radius it
can certify (n = 500: 0.551), so the table marks the radii above that cap; the curves
show the same numbers (percent, the table's radii marked). Each log gets its provenance
record, so `dsmooth report` shows the demo's settings; the printed command reproduces a
row at the paper's n.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from dsmooth.cli.commands.common import ENGINE_OPTIONS, SMOOTHING_OPTIONS
from dsmooth.cli.options import add_options
from dsmooth.runs.job import CertifyJob

SAMPLE = "cifar10_test_every20.npz"
CLASSIFIER = "cifar10-resnet20-akamaster"
#: The table's radii, which the curves mark too.
RADII = (0.0, 0.25, 0.5, 0.75)
BATCH = 110
DENOISERS = {  # row name -> shipped denoiser; the last is the headline one
    "MSE DnCNN": "cifar10-dncnn-mse-0.25-resnet20",
    "Stab DnCNN": "cifar10-dncnn-stab-0.25-resnet20",
}


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="certify bundled CIFAR-10 images with shipped models, end to end (minutes, CPU)",
        description="Certify bundled CIFAR-10 test images with the shipped ResNet-20, without "
        "a denoiser and with the shipped MSE and Stab DnCNN denoisers, then print the "
        "certified-accuracy table and write the curves PNG.",
    )
    p.add_argument("--out-dir", default="runs/demo", help="logs and plot (default runs/demo)")
    p.add_argument("--images", type=int, default=20, help="bundled images to certify (default 20)")
    add_options(
        p,
        SMOOTHING_OPTIONS,
        ("n0", "n", "alpha"),
        defaults={"n0": 50, "n": 500},
        helps={"alpha": "failure probability"},
    )
    add_options(p, ENGINE_OPTIONS, ("threads",))
    p.add_argument(
        "--denoisers",
        nargs="+",
        choices=["mse", "stab"],
        default=["mse", "stab"],
        help="denoiser rows besides 'no denoiser' (default: mse stab)",
    )
    p.set_defaults(func=run)


def sample_path() -> Path:
    return Path(str(resources.files("dsmooth") / "assets" / SAMPLE))


def demo_job(args, denoiser: str | None, sigma: float, threads) -> CertifyJob:
    """The certify job of one demo row: the shipped classifier, `denoiser` (a shipped
    name or None), the bundled images, lattice noise (they are 8-bit, as certify's
    --noise auto would choose), and no compilation (its one-off cost exceeds the whole
    demo on a small CPU)."""
    from dsmooth.certify.methods import CohenCP
    from dsmooth.pipeline.engine import EngineOptions

    return CertifyJob(
        classifier=CLASSIFIER,
        denoiser=denoiser,
        data=str(sample_path()),
        sigma=sigma,
        method=CohenCP(args.n0, args.n, args.alpha),
        num_classes=10,
        class_names="cifar10",
        batch=BATCH,
        noise="lattice",
        engine=EngineOptions(compile=False, threads=threads, backend="torch"),
    )


def table(report, decimals: int = 0) -> str:
    """The demo's table (Markdown): per row, the smoothed classifier's accuracy, its
    certified accuracy at each radius of `report.radii` > 0 (a dagger where the run's n
    cannot reach it), ACR, abstain rate and time per image, then what the columns mean."""
    from dsmooth.analysis.report import md_table
    from dsmooth.analysis.settings import DAGGER, with_caps
    from dsmooth.analysis.tables import percent

    report = with_caps(report)
    radii = [r for r in report.radii if r > 0]
    marks = dict(zip(report.radii, report.marks, strict=True))
    head = ["denoiser", "smoothed acc. %"]
    head += [f"cert. % r={r:g}" + (f" {DAGGER}" if marks[r] else "") for r in radii]
    head += ["ACR", "abstain %", "s/image"]
    body = []
    for s in report.series:
        (log,) = s.logs
        body.append(
            [s.name, percent(log.certified_fraction(0.0), decimals)]
            + [percent(log.certified_fraction(r), decimals) for r in radii]
            + [f"{log.acr:.3f}", percent(log.abstain_rate, decimals)]
            + [f"{log.seconds_per_image:.2f}"]
        )
    notes = [
        "smoothed acc.: accuracy of the smoothed classifier (certified accuracy at r = 0; "
        "abstentions count as wrong). cert. % r=R: share of images classified correctly "
        "with a certified l2 radius of at least R (pixels in [0, 1]). ACR: average certified "
        "radius (0 where wrong or abstained). s/image: seconds per image.",
    ]
    if report.footnote:
        notes.append(report.footnote)
    return md_table(head, body) + "\n\n" + "\n".join(notes) + "\n"


def run(args) -> int:
    from dataclasses import replace

    from dsmooth.analysis.plots import plot_curves
    from dsmooth.analysis.settings import plot_cap, with_caps
    from dsmooth.analysis.tables import analyze
    from dsmooth.cli.commands.analyze import make_warn
    from dsmooth.data.load import load_images
    from dsmooth.errors import UserError
    from dsmooth.logs.provenance import sidecar
    from dsmooth.pipeline.engine import EngineOptions, accelerate, choose_threads, stderr_report
    from dsmooth.runs.local import run_job

    if not 1 <= args.images <= 500:
        raise UserError(f"--images must be between 1 and 500, got {args.images}.")
    sigma = 0.25
    data = load_images(sample_path())
    data = data.__class__(data.images[: args.images], data.labels[: args.images])
    rows = {"no denoiser": demo_job(args, None, sigma, args.threads)}
    for name, spec in DENOISERS.items():
        if name.split()[0].lower() in args.denoisers:
            rows[name] = demo_job(args, spec, sigma, args.threads)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.threads == "auto":  # measured once, on the heaviest row, for all of them
        heaviest = list(rows.values())[-1].load_base("cpu")
        probe = accelerate(heaviest, EngineOptions(compile=False))
        threads = choose_threads(probe, tuple(data.image(0).shape), report=stderr_report)
        rows = {k: replace(j, engine=replace(j.engine, threads=threads)) for k, j in rows.items()}
    print(
        f"dsmooth demo: {args.images} bundled CIFAR-10 test images, sigma={sigma}, "
        f"n0={args.n0}, n={args.n}, alpha={args.alpha}, lattice noise"
    )
    print(f"classifier {CLASSIFIER} (third-party, unchanged); denoisers trained for it:")
    for name, spec in DENOISERS.items():
        print(f"  {name}: {spec}")
    logs = {}
    for name, job in rows.items():
        log = out_dir / f"certify_{name.replace(' ', '_').lower()}.tsv"
        log.unlink(missing_ok=True)  # the demo always starts afresh
        sidecar(log).unlink(missing_ok=True)
        start = time.perf_counter()
        job = replace(job, out=str(log))
        run_job(job, built=job.build(data=data))
        print(f"{name}: {time.perf_counter() - start:.0f} s -> {log}")
        logs[name] = log
    report = with_caps(
        analyze(
            groups=[(name, [log]) for name, log in logs.items()],
            radii=RADII,
            warn=make_warn(False),
        )
    )
    print()
    print(table(report))
    plot = out_dir / "curves.png"
    cap, cap_label = plot_cap(report.caps)
    plot_curves(
        report.series,
        plot,
        max_radius=RADII[-1],
        title=f"dsmooth demo: CIFAR-10 ResNet-20, sigma = {sigma}, n = {args.n}",
        radii=RADII,
        cap=cap,
        cap_label=cap_label,
    )
    print(f"curves (the table's radii marked): {plot}")
    print(
        f"one page with the settings, tables and curves:\n"
        f"  dsmooth report {out_dir}/certify_*.tsv --radii {' '.join(f'{r:g}' for r in RADII)} "
        f"--out {out_dir}/report.html\n"
        f"the same at the paper's protocol (500 images, n=10000, hours on a CPU):\n"
        f"  dsmooth certify --data {sample_path()} --classifier {CLASSIFIER} "
        f"--denoiser {list(DENOISERS.values())[-1]} --sigma 0.25 --n0 100 --n 10000 --out log.tsv"
    )
    return 0

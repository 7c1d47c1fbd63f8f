"""What a few minutes of a lent CUDA GPU should do, in priority order, as one command.

    PYTHONPATH=src python results/gpu_session.py --out "$OUT"                 # on the GPU
    PYTHONPATH=src python results/gpu_session.py --out /tmp/g --device cpu --tiny  # rehearsal

The GPU machine has torch, numpy, scipy, safetensors and tqdm, and receives the working
tree only (the bundled 500 test images and the shipped weights; no training data), so
this script needs nothing else. Every step is bounded in time and writes into --out as
it goes: a run cut off at its time limit still returns what it finished.

1. env.txt: the GPU, driver, torch and CUDA versions.
2. logs/NAME.tsv: the CIFAR-10 campaign's certification logs that need no unfinished
   model: exactly the commands results/campaign.py runs (fp32, lattice noise, the same
   seeds), plus --device cuda. Copy them into results/cifar10/logs/ afterwards; a log
   records its device type, so none of them can be mixed with a CPU-made one.
3. cuda_checks.txt: counts identical for any batch size and on a repeat at fp32 (the
   engine's exact-fp32 setting: TF32 off), and bf16 / compiled agreement with fp32 under
   noise, on the shipped MSE DnCNN + ResNet-110.
4. bench_cuda.txt: `dsmooth bench --device cuda` (bf16, compile, batch auto).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAIN = "import sys; from dsmooth.cli import main; sys.exit(main(sys.argv[1:]))"


def campaign():
    spec = importlib.util.spec_from_file_location("campaign", ROOT / "results" / "campaign.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["campaign"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def dsmooth(argv: list[str], log: Path, seconds: float) -> int:
    """One dsmooth command in its own process, its output appended to `log`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with log.open("a") as out:
        out.write(f"\n$ dsmooth {' '.join(argv)}\n")
        out.flush()
        try:
            proc = subprocess.run(
                [sys.executable, "-c", MAIN, *argv], stdout=out, stderr=out, env=env,
                timeout=max(seconds, 1), check=False,
            )  # fmt: skip
            return proc.returncode
        except subprocess.TimeoutExpired:
            out.write(f"(stopped after {seconds:.0f} s; the log keeps its rows and resumes)\n")
            return 124


def environment(out: Path, device: str) -> None:
    import torch

    lines = [
        f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, device {device}",
    ]
    if device == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        lines.append(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, capability "
                     f"{p.major}.{p.minor}, bf16 {torch.cuda.is_bf16_supported()}")  # fmt: skip
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, check=False)
        lines.append(smi.stdout)
    (out / "env.txt").write_text("\n".join(lines) + "\n")


def certification(out: Path, device: str, tiny: bool, seconds: float) -> None:
    """The campaign's ready certification steps, most useful first, in the time left."""
    c = campaign()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ready = [
        s for s in c.steps()
        if isinstance(s, c.Certify) and str(c.RUNS) not in " ".join(s.argv)
    ]  # fmt: skip
    deadline = time.monotonic() + seconds
    for step in ready:
        left = deadline - time.monotonic()
        if left < 10:
            break
        argv = ["certify", *step.argv, "--out", str(logs / f"{step.name}.tsv")]
        argv += ["--device", device, "--batch", "2000", "--no-compile", "--no-progress"]
        if tiny:  # rehearsal: the same commands on 3 images with small budgets
            argv = [a if a not in ("10000", "100") else "300" for a in argv] + ["--max", "3"]
        dsmooth(argv, out / "certification.txt", left)


def checks(out: Path, device: str, tiny: bool) -> None:
    """CUDA-relevant properties the CPU tests show for the CPU, measured here."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from dsmooth import Smooth, compose, load_model
    from dsmooth.data.load import load_images
    from dsmooth.pipeline.engine import EngineOptions, accelerate

    lines = []
    model = compose(
        load_model("pretrained:cifar10-resnet110-50ep"),
        load_model("pretrained:cifar10-dncnn-mse-0.25", role="denoiser"),
    )
    data = load_images(str(ROOT / "src" / "dsmooth" / "assets" / "cifar10_test_every20.npz"))
    num = 300 if tiny else 20_000
    exact = accelerate(model, EngineOptions(precision="fp32", compile=False, device=device))
    smooth = Smooth(exact, 10, 0.25, seed=0)  # the device follows the model's
    x = data.image(0)
    first = smooth.sample_counts(x, num, 1000, index=0)
    for batch in (100, 1000, 4000) if not tiny else (50, 300):
        same = np.array_equal(smooth.sample_counts(x, num, batch, index=0), first)
        lines.append(f"fp32 counts at batch {batch} equal batch 1000's: {same}")
    again = np.array_equal(smooth.sample_counts(x, num, 1000, index=0), first)
    lines.append(f"fp32 counts on a repeat equal: {again}; counts {first.tolist()}")
    (out / "cuda_checks.txt").write_text("\n".join(lines) + "\n")
    images = 10 if tiny else 100
    draws = 16 if tiny else 128
    for name, options in (
        ("bf16 eager", EngineOptions(precision="bf16", compile=False, device=device)),
        ("bf16 compiled", EngineOptions(precision="bf16", compile=True, device=device)),
        ("fp32 compiled", EngineOptions(precision="fp32", compile=True, device=device)),
    ):
        if device == "cpu" and name.startswith("bf16"):
            continue
        fast = accelerate(model, options)
        agree = total = 0
        start = time.perf_counter()
        for i in range(images):
            img = data.image(i)
            g = torch.Generator(device=device).manual_seed(i)
            batch = img.to(device).expand(draws, *img.shape)
            noisy = batch + 0.25 * torch.randn(batch.shape, generator=g, device=device)
            with torch.inference_mode():
                a = exact(noisy).argmax(1)
                b = fast(noisy).float().argmax(1)
            agree += int((a == b).sum())
            total += draws
        lines.append(f"{name}: labels agree with fp32 eager on {agree / total:.4f} of "
                     f"{total} noisy draws ({time.perf_counter() - start:.1f} s)")  # fmt: skip
        (out / "cuda_checks.txt").write_text("\n".join(lines) + "\n")  # as it goes


def bench(out: Path, device: str, tiny: bool, seconds: float) -> None:
    argv = ["bench", "--device", device, "--pipelines", "dncnn+cifar_resnet110", "cifar_resnet110"]
    argv += ["--samples", "400" if tiny else "20000", "--rounds", "2", "--no-openvino"]
    argv += ["--peak-size", "512" if tiny else "8192"]
    argv += ["--out", str(out / "bench_cuda.txt")]
    dsmooth(argv, out / "bench.txt", seconds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for everything this run writes")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="rehearsal sizes (for a CPU)")
    p.add_argument("--seconds", type=float, default=540, help="for all steps together")
    p.add_argument("--step", choices=("checks",), help=argparse.SUPPRESS)  # one step, inside
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.step == "checks":
        checks(out, args.device, args.tiny)
        return 0
    deadline = time.monotonic() + args.seconds
    environment(out, args.device)
    certification(out, args.device, args.tiny, 0.6 * args.seconds)
    left = deadline - time.monotonic()
    own = [sys.executable, str(Path(__file__).resolve()), "--out", str(out), "--device",
           args.device, "--step", "checks"] + (["--tiny"] if args.tiny else [])  # fmt: skip
    try:  # in a child, so that its time is bounded too
        subprocess.run(own, timeout=max(left / 2, 1), check=True)
    except (subprocess.SubprocessError, OSError) as e:  # the logs are worth more
        with (out / "cuda_checks.txt").open("a") as f:
            f.write(f"checks did not finish: {type(e).__name__}: {e}\n")
    bench(out, args.device, args.tiny, deadline - time.monotonic())
    for name in ("cuda_checks.txt", "bench_cuda.txt"):
        if (out / name).is_file():
            print((out / name).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sequential vs fixed-n certification on the pA distribution of the paper's CIFAR-10 logs.

Which images: every CIFAR-10 log released with Salman et al. (2020) that used n = 100,000
(`.../test/sigma_*`, 500 test images each) and certifies at the noise level its model was
trained for (Cohen et al.'s ResNet-110s without denoiser, and the MSE / classification-
objective denoisers). Each image's pA is taken as Phi(radius / sigma) of its logged
fixed-n certificate, i.e. the Clopper-Pearson lower bound the authors observed: a slight
underestimate of the true pA, the same for both methods. Abstained images carry no pA;
they get ABSTAIN_PA (their top class is below ~1/2 by construction; 0.45 is a cautious
choice, see docs/sequential.md, and --abstain-pa changes it).

Both methods then certify the *same* images with the *same* pA, REPEATS times each,
simulated at the level of counts (binomial draws; the selection step keeps the logged
prediction). Fixed-n is Cohen et al.'s CERTIFY (n0 = 100, n = 100,000, alpha = 0.001).
Sequential runs `dsmooth.certify.sequential.run_sequential`, the code the product runs, in
decision mode for the radii 0.25/0.5/0.75 and in maximal-radius mode with budget
n_max = 100,000. Samples include the n0 = 100 selection samples for both methods.

    .venv/bin/python benchmarks/sequential_efficiency.py \
        > benchmarks/results/sequential_efficiency.txt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import norm

from dsmooth.certify.sequential import SequentialPlan, cp_lower, radius_of, run_sequential

LOGS = Path(__file__).resolve().parents[2] / "shared/fixtures/paper-logs/certify/cifar10"
RADII = (0.25, 0.5, 0.75)
N0, N, ALPHA = 100, 100_000, 0.001
ABSTAIN_PA = 0.45


def matched_logs(root: Path) -> list[Path]:
    """n = 100,000 logs whose certification sigma equals the model's training noise."""
    out = []
    for p in sorted(root.rglob("sigma_*")):
        if p.parent.name != "test":
            continue
        noise = p.parent.parent.name.removeprefix("noise_")
        if noise == p.name.removeprefix("sigma_"):
            out.append(p)
    return out


def load(path: Path, abstain_pa: float):
    """(sigma, pA proxy, prediction correct) per image of one log."""
    sigma = float(path.name.removeprefix("sigma_"))
    rows = np.genfromtxt(path, delimiter="\t", names=True, dtype=None, encoding="utf-8")
    predict, radius, correct = rows["predict"], rows["radius"].astype(float), rows["correct"]
    p = np.where(predict >= 0, norm.cdf(radius / sigma), abstain_pa)
    return sigma, p, (correct == 1) & (predict >= 0)


def certified_accuracy(radius: np.ndarray, correct: np.ndarray) -> np.ndarray:
    return np.array([np.mean(correct & (radius >= r)) for r in RADII])


def fixed_n(p: np.ndarray, sigma: float, rng) -> tuple[np.ndarray, np.ndarray]:
    k = rng.binomial(N, p)
    return radius_of(cp_lower(k, N, ALPHA), sigma), np.full(p.shape, N0 + N)


def sequential(p: np.ndarray, sigma: float, rng, radii) -> tuple[np.ndarray, np.ndarray]:
    plan = SequentialPlan(sigma, ALPHA, n_max=N, radii=radii)
    out = run_sequential(plan, lambda _r, m, active: rng.binomial(m, p[active]), p.size)
    return radius_of(out.p_lower, sigma), N0 + out.n_used


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=10, help="simulations per image")
    ap.add_argument("--abstain-pa", type=float, default=ABSTAIN_PA)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not LOGS.is_dir():
        print(f"paper logs not found at {LOGS}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    methods = {
        "fixed-n CP": lambda p, s: fixed_n(p, s, rng),
        "seq decision": lambda p, s: sequential(p, s, rng, RADII),
        "seq max-radius": lambda p, s: sequential(p, s, rng, None),
    }
    acc = {m: [] for m in methods}
    used = {m: [] for m in methods}
    print(
        f"pA proxy: Phi(logged radius / sigma); abstains pA = {args.abstain_pa}; "
        f"n0 = {N0}, n = n_max = {N}, alpha = {ALPHA}; {args.repeats} simulations per image."
    )
    print("certified accuracy (%) at radius " + "/".join(map(str, RADII)) + ", mean samples")
    for path in matched_logs(LOGS):
        sigma, p, correct = load(path, args.abstain_pa)
        p, correct = np.tile(p, args.repeats), np.tile(correct, args.repeats)
        name = str(path.relative_to(LOGS)).replace("MODEL_resnet110_90epochs", "rn110")
        print(f"\n{name}  ({p.size // args.repeats} images)")
        for m, run in methods.items():
            radius, n_used = run(p, sigma)
            a = 100 * certified_accuracy(radius, correct)
            acc[m].append(a)
            used[m].append(n_used.mean())
            cells = " / ".join(f"{v:5.1f}" for v in a)
            print(f"  {m:15s} {cells}   samples {n_used.mean():9.0f}")
    print("\nmean over logs")
    base_used = np.mean(used["fixed-n CP"])
    for m in methods:
        a, u = np.mean(acc[m], axis=0), np.mean(used[m])
        worst = np.max(np.abs(np.array(acc[m]) - np.array(acc["fixed-n CP"])))
        fewest = np.min(np.array(used["fixed-n CP"]) / np.array(used[m]))
        cells = " / ".join(f"{v:5.1f}" for v in a)
        print(
            f"  {m:15s} {cells}   samples {u:9.0f}   {base_used / u:5.1f}x fewer "
            f"(worst log {fewest:4.1f}x)   max |diff| on one log {worst:.2f} pt"
        )
    print(f"\n({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

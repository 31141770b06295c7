"""Reproduce "How JEPA avoids noisy features" (Littwin et al., NeurIPS 2024) with the engine's
own loss (`engine.objective.jepa_loss`), stop-gradient target and EMA (`engine.ops.EMATarget`).

Deep linear encoders (depth 1, 2 and 4, square layers), a linear predictor, small balanced
initialisation (every layer a multiple of the identity), on data with independent features in the
paper's terms: feature i has covariance lambda_i = E[x_i y_i] between the context view x and the
target view y, and regression coefficient rho_i = lambda_i / E[x_i^2] (y_i = rho_i x_i + noise).
The features are chosen so the two orders disagree: lambda rises while rho falls. JEPA regresses
the target encoder's features of y (stop-gradient; `--momentum` sets the EMA, 0 = the same
weights, the paper's setting); MAE regresses y itself. Full-batch gradient descent on one fixed
sample whitened to the exact covariances.

The paper's claim: MAE learns the features in order of lambda at every depth; JEPA at depth >= 2
learns them in order of rho, more sharply as depth grows, and low-rho features stay small.

    python benchmarks/deep_linear.py [--out docs/deep_linear.png] [--steps 6000]

Prints a markdown table of the step at which each feature's encoder weight (the norm of the
encoder's column for that feature) first reaches half its final value, per objective and depth,
and writes the curves as a PNG. Imports torch, numpy, matplotlib and the engine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.objective import jepa_loss  # noqa: E402
from engine.ops import EMATarget  # noqa: E402

LAMBDA = (0.2, 0.4, 0.6, 0.8, 1.0)  # covariance E[x_i y_i]: rises
RHO = (1.0, 0.8, 0.6, 0.4, 0.2)  # regression coefficient of y_i on x_i: falls


class DeepLinear(torch.nn.Module):
    """x -> W_L ... W_1 x, every layer d x d, initialised to eps * I (small and balanced)."""

    def __init__(self, d: int, depth: int, eps: float) -> None:
        super().__init__()
        self.layers = torch.nn.ParameterList(
            torch.nn.Parameter(eps * torch.eye(d, dtype=torch.float32)) for _ in range(depth)
        )

    def matrix(self) -> torch.Tensor:
        m = self.layers[0]
        for w in self.layers[1:]:
            m = w @ m
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.matrix().T


def sample(n: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y [n, d] with exactly E[x_i^2] = lambda_i / rho_i, E[x_i y_i] = lambda_i and
    E[y_i^2] = lambda_i * rho_i + 1 (unit-variance noise on the target view), all else 0."""
    lam, rho = torch.tensor(LAMBDA, dtype=torch.float64), torch.tensor(RHO, dtype=torch.float64)
    d = len(LAMBDA)
    z = torch.randn(n, 2 * d, generator=rng, dtype=torch.float64)
    z = z - z.mean(0)
    # whiten the sample exactly, so its covariances are the population's
    chol = torch.linalg.cholesky(z.T @ z / n)
    z = z @ torch.linalg.inv(chol).T
    x = z[:, :d] * (lam / rho).sqrt()
    y = rho * x + z[:, d:]
    return x.float(), y.float()


def train(
    objective: str,
    depth: int,
    steps: int,
    lr: float,
    eps: float,
    momentum: float,
    n: int = 8192,
    seed: int = 0,
) -> np.ndarray:
    """[steps + 1, features]: the norm of the encoder's column for each feature over training."""
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    d = len(LAMBDA)
    enc = DeepLinear(d, depth, eps)
    pred = torch.nn.Linear(d, d, bias=False)
    with torch.no_grad():
        pred.weight.copy_(eps * torch.eye(d))
    target = DeepLinear(d, depth, eps).requires_grad_(False)
    target.load_state_dict(enc.state_dict())
    ema = EMATarget(target, steps, momentum, momentum)
    opt = torch.optim.SGD([*enc.parameters(), *pred.parameters()], lr=lr)
    trace = [enc.matrix().detach().norm(dim=0).numpy()]
    x, y = sample(n, rng)
    for _ in range(steps):
        goal = y if objective == "mae" else target(y)  # no grad through the target
        # jepa_loss averages over entries; times d gives the summed squared error per sample
        loss = jepa_loss(pred(enc(x)), goal.detach(), "l2") * d / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        if objective == "jepa":
            ema.update(enc)
        trace.append(enc.matrix().detach().norm(dim=0).numpy())
    return np.stack(trace)


def half_times(trace: np.ndarray) -> list[int | None]:
    """First step at which each feature's weight has covered half its way from the start to
    its final value; None when it stays small (final value under twice the start)."""
    out: list[int | None] = []
    for i in range(trace.shape[1]):
        final, start = trace[-1, i], trace[0, i]
        if final < 2 * start:
            out.append(None)
            continue
        out.append(int(np.argmax(trace[:, i] >= start + (final - start) / 2)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/deep_linear.png", help="PNG of the curves")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument(
        "--eps", type=float, default=0.05, help="initial end-to-end scale of the encoder"
    )
    p.add_argument("--momentum", type=float, default=0.0, help="EMA of the JEPA target")
    p.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    traces = {}
    for objective in ("mae", "jepa"):
        for depth in args.depths:
            eps = args.eps ** (1 / depth)  # the same end-to-end scale eps at every depth
            traces[objective, depth] = train(
                objective, depth, args.steps, args.lr, eps, args.momentum
            )
    pairs = enumerate(zip(LAMBDA, RHO, strict=True))
    names = [f"f{i} (lambda {lam:g}, rho {rho:g})" for i, (lam, rho) in pairs]
    print("Step at which each feature's encoder weight reaches half its final value")
    print("(final weight in brackets; 'small' = stays under twice its start)\n")
    print("| objective | depth | " + " | ".join(names) + " | order learned |")
    print("|---|---|" + "---|" * len(names) + "---|")
    for (objective, depth), trace in traces.items():
        t = half_times(trace)
        cells = [
            f"small ({trace[-1, i]:.2f})" if v is None else f"{v} ({trace[-1, i]:.2f})"
            for i, v in enumerate(t)
        ]
        grown = [
            i for i in np.argsort([v if v is not None else 1e9 for v in t]) if t[i] is not None
        ]
        order = " < ".join(f"f{i}" for i in grown) or "none"
        print(f"| {objective.upper()} | {depth} | " + " | ".join(cells) + f" | {order} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2, len(args.depths), figsize=(4 * len(args.depths), 6.5), squeeze=False
    )
    for r, objective in enumerate(("mae", "jepa")):
        for c, depth in enumerate(args.depths):
            ax = axes[r][c]
            trace = traces[objective, depth]
            for i, name in enumerate(names):
                ax.plot(trace[:, i], label=name)
            ax.set_title(f"{objective.upper()}, depth {depth}")
            ax.set_xlabel("step")
            ax.set_ylabel("encoder weight of the feature")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"\ncurves written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

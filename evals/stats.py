"""The two tests the gate uses, from the formulas (no scipy): a one-sided two-proportion z-test
for unpaired scores and an exact McNemar (sign) test for paired per-question correctness."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class TestResult:
    test: str  # "two-proportion" | "mcnemar-exact"
    diff: float  # run - baseline accuracy
    stderr: float  # of the difference
    p_value: float  # one-sided, H1: the run is worse
    alpha: float
    regression: bool
    details: dict

    def to_dict(self) -> dict:
        return asdict(self)


def normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def binomial_upper_tail(k: int, m: int) -> float:
    """P(X >= k) for X ~ Binomial(m, 1/2), exactly (integers until the final division)."""
    if m < 0 or k > m:
        return 0.0 if k > m >= 0 else 1.0
    k = max(k, 0)
    return sum(math.comb(m, i) for i in range(k, m + 1)) / 2**m


def _alpha(confidence: float) -> float:
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    return 1.0 - confidence


def two_proportion(run_correct: int, run_n: int, base_correct: int, base_n: int,
                   confidence: float = 0.95) -> TestResult:
    """H0: the run is as accurate as the baseline; one-sided, pooled standard error under H0.
    A regression when P(a drop at least this large | H0) < 1 - confidence."""
    alpha = _alpha(confidence)
    for name, c, n in (("run", run_correct, run_n), ("baseline", base_correct, base_n)):
        if n <= 0 or not 0 <= c <= n:
            raise ValueError(f"{name}: correct must be in [0, n] with n >= 1, got {c}/{n}")
    p1, p2 = run_correct / run_n, base_correct / base_n
    pooled = (run_correct + base_correct) / (run_n + base_n)
    se = math.sqrt(pooled * (1 - pooled) * (1 / run_n + 1 / base_n))
    diff = p1 - p2
    if se == 0.0:  # both all-right or all-wrong: no difference to test
        p = 1.0
    else:
        p = normal_cdf(diff / se)
    return TestResult("two-proportion", diff, se, p, alpha, p < alpha,
                      {"run": [run_correct, run_n], "baseline": [base_correct, base_n], "z": diff / se if se else 0.0})


def mcnemar(run: list[int], base: list[int], confidence: float = 0.95) -> TestResult:
    """Paired per-question correctness (0/1, same questions in the same order). Only discordant
    questions carry information: under H0 each is a loss (baseline right, run wrong) or a gain with
    probability 1/2, so P(losses >= observed) is a binomial tail."""
    alpha = _alpha(confidence)
    if len(run) != len(base) or not run:
        raise ValueError(f"paired vectors must be non-empty and of equal length, got {len(run)} and {len(base)}")
    if any(v not in (0, 1) for v in list(run) + list(base)):
        raise ValueError("paired vectors must hold 0/1 correctness")
    n = len(run)
    losses = sum(1 for r, b in zip(run, base) if b and not r)
    gains = sum(1 for r, b in zip(run, base) if r and not b)
    m = losses + gains
    diff = (gains - losses) / n
    se = math.sqrt(max(m - (gains - losses) ** 2 / n, 0.0)) / n
    p = binomial_upper_tail(losses, m)
    return TestResult("mcnemar-exact", diff, se, p, alpha, p < alpha,
                      {"n": n, "losses": losses, "gains": gains, "discordant": m})

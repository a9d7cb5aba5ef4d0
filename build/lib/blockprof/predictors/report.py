"""Fidelity of a latency predictor on held-out archs: numbers and a scatter plot."""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

METRIC_KEYS = ("mape", "rmse_ms", "spearman", "kendall", "within5", "within10", "topk_overlap")


def fidelity(y_true, y_pred, top_frac: float = 0.1) -> dict[str, float]:
    """MAPE (%), RMSE (ms), Spearman rho, Kendall tau, share of archs within +-5 % and
    +-10 % (in %), and top-k overlap: the share of the k truly fastest archs that are
    also among the k predicted fastest (k = `top_frac` of the set, at least 1)."""
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.shape != p.shape or t.size == 0:
        raise ValueError(f"fidelity needs two equal, non-empty arrays, got {t.shape} and {p.shape}")
    rel = np.abs(p - t) / t
    k = max(1, int(math.ceil(top_frac * t.size)))
    top_t, top_p = set(np.argsort(t, kind="stable")[:k]), set(np.argsort(p, kind="stable")[:k])
    if t.size > 1 and np.ptp(t) > 0 and np.ptp(p) > 0:
        rho, tau = float(stats.spearmanr(t, p).statistic), float(stats.kendalltau(t, p).statistic)
    else:
        rho = tau = float("nan")
    return {"mape": float(rel.mean() * 100), "rmse_ms": float(np.sqrt(np.mean((p - t) ** 2))),
            "spearman": rho, "kendall": tau,
            "within5": float((rel <= 0.05).mean() * 100), "within10": float((rel <= 0.10).mean() * 100),
            "topk_overlap": float(len(top_t & top_p) / k), "topk": float(k), "n": float(t.size)}


def retest_noise(first, second) -> dict[str, float]:
    """Test-retest agreement of two timings of the same archs: MAPE of the retest
    against the first timing (%), and the share of archs within +-10 % (%)."""
    f = fidelity(first, second)
    return {"retest_mape": f["mape"], "retest_within10": f["within10"], "retest_within5": f["within5"],
            "retest_spearman": f["spearman"], "retest_n": f["n"]}


def scatter_figure(y_true, y_pred, title: str):
    """Predicted vs measured, with the identity and +-10 % lines."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    t, p = np.asarray(y_true), np.asarray(y_pred)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(t, p, s=6, alpha=0.6)
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    xs = np.array([lo, hi])
    ax.plot(xs, xs, "k-", lw=1, label="exact")
    ax.plot(xs, xs * 1.1, "k:", lw=0.8, label="+-10 %")
    ax.plot(xs, xs * 0.9, "k:", lw=0.8)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig

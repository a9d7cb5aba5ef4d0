"""Figures. matplotlib runs headless (Agg) everywhere."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def block_heatmaps(summary: pd.DataFrame, value_col: str, title: str, cbar_label: str,
                   diverging: bool = False):
    """Rows = unit-layer, columns = block; one panel per fixed resolution (the paper's figure).

    `summary` holds single-slot groups with columns unit, layer, block, resolution, value_col.
    """
    df = summary.copy()
    df["res_key"] = df["resolution"].apply(lambda r: "any" if pd.isna(r) else str(int(r)))
    panels = sorted(df["res_key"].unique(), key=lambda k: (k != "any", k))
    blocks = list(dict.fromkeys(df["block"]))
    rows = sorted({(int(u), int(l)) for u, l in zip(df["unit"], df["layer"])})
    row_index = {r: i for i, r in enumerate(rows)}
    col_index = {b: i for i, b in enumerate(blocks)}
    vmax = float(np.nanmax(np.abs(df[value_col]))) if diverging else None
    fig, axes = plt.subplots(1, len(panels), figsize=(1.0 + 0.75 * len(blocks) * len(panels), 1.2 + 0.32 * len(rows)),
                             squeeze=False)
    for ax, key in zip(axes[0], panels):
        grid = np.full((len(rows), len(blocks)), np.nan)
        for _, r in df[df["res_key"] == key].iterrows():
            grid[row_index[(int(r["unit"]), int(r["layer"]))], col_index[r["block"]]] = r[value_col]
        kw = dict(cmap="RdBu_r", vmin=-vmax, vmax=vmax) if diverging else dict(cmap="viridis")
        im = ax.imshow(grid, aspect="auto", **kw)
        ax.set_xticks(range(len(blocks)))
        ax.set_xticklabels([b.replace("mbconv", "MB").replace("bneck_", "") for b in blocks], rotation=60,
                           ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([f"U{u} L{l}" for u, l in rows], fontsize=7)
        ax.set_title(f"resolution {key}" if key != "any" else "resolution sampled", fontsize=9)
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=5,
                        color="white" if not diverging else "black")
        fig.colorbar(im, ax=ax, label=cbar_label, fraction=0.05)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)

"""Static plots of crosscoders, feature graphs and stage diffs, drawn with matplotlib's Agg canvas.

Every ``*_figure`` function takes plain arrays, lists or dicts and returns a :class:`matplotlib.figure.Figure`;
:func:`figure_png` turns one into PNG bytes (and :func:`save_png` into a file). Figures are made through the
object API on a ``FigureCanvasAgg``, never through ``pyplot``, so nothing here touches matplotlib's global backend
or figure registry. Community colours are :func:`featgraph.html.community_colors`, the graph pages' colours.

The pure helpers beside the plots (:func:`peak_order`, :func:`rel_norm_counts`, :func:`community_flows`,
:func:`sankey_layout`) compute what the plots show, so tests check numbers, not pixels.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from crosscoder.io import atomic_file

from .html import community_colors

__all__ = [
    "figure_png", "save_png", "short_hookpoint", "metrics_figure", "peak_order", "layer_profile_figure",
    "rel_norm_counts", "rel_norm_figure", "quadrant_figure", "community_sizes_figure", "CommunityFlows",
    "community_flows", "SankeyBand", "sankey_layout", "sankey_figure",
    "drop_k_figure", "hookpoint_table_figure", "ce_diff_histogram_figure", "correlation_figure", "embedding_figure",
    "diagnose_figures", "similarity_figure",
]

SHARED_BAND = (0.3, 0.7)
"""Relative decoder norm r = ‖d_B‖/(‖d_A‖+‖d_B‖) of a feature shared by both models (ckkissane)."""
OTHER = "other"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig) -> bytes:
    """PNG bytes of ``fig`` (no timestamp metadata, so the same figure gives the same bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def save_png(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG file, atomically."""
    with atomic_file(path) as tmp:
        Path(tmp).write_bytes(figure_png(fig))
    return Path(path)


def short_hookpoint(name: str) -> str:
    """``blocks.1.hook_resid_post`` → ``1.resid_post`` (axis labels).

    >>> short_hookpoint("blocks.0.ln2.hook_normalized")
    '0.ln2.normalized'
    """
    return name.removeprefix("blocks.").replace("hook_", "")


def _community_palette(communities: Sequence[int]) -> dict[int, str]:
    ids = [int(c) for c in communities]
    colors = community_colors(max(ids, default=-1) + 1)
    return {c: colors[c] if c >= 0 else "#999999" for c in ids}


# ---------------------------------------------------------------- crosscoder metrics


def metrics_figure(labels: Sequence[str], hookpoints: Sequence[Sequence[str]], fvu: Sequence[Sequence[float]],
                   l0: Sequence[float], dead: Sequence[float], ce_recovered: Sequence[Sequence[float]] | None = None):
    """Bar charts of crosscoder metrics: FVU per hookpoint (one bar per crosscoder in each hookpoint's group; a
    crosscoder that does not read a hookpoint has no bar there), L0 and dead fraction per crosscoder, and the
    splice-in CE loss recovered per hookpoint when any crosscoder has it.

    ``labels[c]`` names crosscoder c; ``hookpoints[c]`` and ``fvu[c]`` (and ``ce_recovered[c]``, possibly empty)
    are its per-hookpoint lists.
    """
    union = list(dict.fromkeys(h for hs in hookpoints for h in hs))
    has_ce = ce_recovered is not None and any(len(v) for v in ce_recovered)
    panels = [("FVU per hookpoint (↓)", fvu)] + ([("CE loss recovered (↑)", ce_recovered)] if has_ce else [])
    panel_w, side_w = max(2.6, 0.3 * len(union) * max(1, len(labels))), max(1.6, 0.3 * len(labels))
    fig = _figure(len(panels) * panel_w + 2 * side_w, 3.2)
    axes = fig.subplots(1, len(panels) + 2, width_ratios=[panel_w] * len(panels) + [side_w, side_w])
    colors = community_colors(len(labels))
    width = 0.8 / max(1, len(labels))
    for ax, (title, values) in zip(axes, panels):
        for c, (hs, vs) in enumerate(zip(hookpoints, values)):
            if not len(vs):
                continue
            n = min(len(hs), len(vs))
            x = np.array([union.index(h) for h in hs[:n]]) + (c - (len(labels) - 1) / 2) * width
            ax.bar(x, vs[:n], width, color=colors[c], label=labels[c])
        ax.set_xticks(range(len(union)), [short_hookpoint(h) for h in union], rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
    if len(labels) > 1:  # below the axes, out of the bars' way (constrained layout makes room)
        axes[0].legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=min(len(labels), 5))
    for ax, title, values in ((axes[-2], "L0", l0), (axes[-1], "dead fraction", dead)):
        ax.bar(range(len(labels)), values, color=colors)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
    axes[-1].set_ylim(0, max(0.05, 1.1 * max(dead, default=0.0)))
    return fig


# ---------------------------------------------------------------- layer profiles


def peak_order(profiles_FL: np.ndarray) -> np.ndarray:
    """Feature order for a layer-profile heatmap: by peak hookpoint, then by the profile's centre of mass (so each
    peak block runs from features leaning earlier to features leaning later), then by index.

    >>> peak_order(np.array([[0.1, 0.9], [0.8, 0.2], [0.6, 0.4]])).tolist()
    [1, 2, 0]
    """
    P = np.nan_to_num(np.asarray(profiles_FL, dtype=float))
    if P.size == 0:
        return np.zeros(0, dtype=np.int64)
    total = P.sum(1)
    centre = (P * np.arange(P.shape[1])).sum(1) / np.where(total > 0, total, 1.0)
    return np.lexsort((np.arange(len(P)), centre, P.argmax(1)))


def layer_profile_figure(profiles_FL: np.ndarray, hookpoints: Sequence[str], community_F: Sequence[int] | None = None,
                         top: int = 8):
    """Left: heatmap of every feature's layer profile as shares, ‖W_dec,i^l‖ / Σ_l' ‖W_dec,i^l'‖ (each row sums to 1;
    raw norms or shares may be passed), features sorted by :func:`peak_order`. Right: the mean share per hookpoint
    of each of the ``top`` largest communities (or of all features)."""
    P = np.abs(np.nan_to_num(np.asarray(profiles_FL, dtype=float)))
    total = P.sum(1, keepdims=True)
    P = P / np.where(total > 0, total, 1.0)
    F, L = P.shape
    hp = [short_hookpoint(h) for h in hookpoints] if len(hookpoints) == L else [str(i) for i in range(L)]
    fig = _figure(max(6.0, 3.5 + 0.9 * L), 3.6)
    ax, bx = fig.subplots(1, 2, width_ratios=[1, 1.3])
    im = ax.imshow(P[peak_order(P)], aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=max(1e-9, P.max()))
    ax.set_xticks(range(L), hp, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"{F} features (sorted by peak)", fontsize=8)
    ax.set_title("layer profile per feature", fontsize=9)
    peaks = np.sort(P.argmax(1))
    for y in np.flatnonzero(np.diff(peaks)) + 0.5:  # boundaries between peak blocks
        ax.axhline(y, color="white", linewidth=0.8)
    cb = fig.colorbar(im, ax=ax, shrink=0.8)
    cb.set_label("share of decoder norm", fontsize=8)
    if community_F is not None and len(community_F) == F:
        comm = np.asarray(community_F, dtype=np.int64)
        palette = _community_palette(comm.tolist())
        for c, n in Counter(comm.tolist()).most_common(top):
            bx.plot(range(L), P[comm == c].mean(0), marker="o", color=palette[c], label=f"community {c} ({n})")
        bx.set_title("mean profile per community (largest)", fontsize=9)
    else:
        bx.plot(range(L), P.mean(0), marker="o", color="#444444", label=f"all {F} features")
        bx.set_title("mean profile", fontsize=9)
    bx.set_xticks(range(L), hp, rotation=30, ha="right", fontsize=8)
    bx.set_ylim(0, None)
    bx.legend(fontsize=7, frameon=False, loc="best")
    return fig


# ---------------------------------------------------------------- relative decoder norm


def rel_norm_counts(r: Sequence[float], shared: tuple[float, float] = SHARED_BAND) -> dict[str, int]:
    """How many features are A-specific (r ≤ lo), shared (lo < r < hi), B-specific (r ≥ hi), or undefined (NaN:
    a feature with zero decoder norm in both models).

    >>> rel_norm_counts([0.0, 0.5, 0.69, 1.0, float("nan")])
    {'a_only': 1, 'shared': 2, 'b_only': 1, 'undefined': 1}
    """
    r = np.asarray(r, dtype=float)
    ok = np.isfinite(r)
    lo, hi = shared
    return {"a_only": int((r[ok] <= lo).sum()), "shared": int(((r[ok] > lo) & (r[ok] < hi)).sum()),
            "b_only": int((r[ok] >= hi).sum()), "undefined": int((~ok).sum())}


def rel_norm_figure(r: Sequence[float], shared: tuple[float, float] = SHARED_BAND, bins: int = 40,
                    names: tuple[str, str] = ("A", "B")):
    """Histogram of the relative decoder norm r = ‖d_B‖/(‖d_A‖+‖d_B‖) over [0, 1], the shared band shaded."""
    r = np.asarray(r, dtype=float)
    counts = rel_norm_counts(r, shared)
    fig = _figure(6, 3.2)
    ax = fig.subplots()
    ax.axvspan(*shared, color="#cfe3ff", zorder=0, label=f"shared {shared[0]} < r < {shared[1]}: {counts['shared']}")
    ax.hist(r[np.isfinite(r)], bins=bins, range=(0, 1), color="#3b6ea8", zorder=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"r = ‖d_{names[1]}‖ / (‖d_{names[0]}‖ + ‖d_{names[1]}‖)", fontsize=9)
    ax.set_ylabel("features", fontsize=9)
    ax.set_title(f"relative decoder norm: {counts['a_only']} {names[0]}-only, {counts['shared']} shared, "
                 f"{counts['b_only']} {names[1]}-only", fontsize=9)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    return fig


# ---------------------------------------------------------------- stage-cosine quadrant


def quadrant_figure(x: Sequence[float], y: Sequence[float], relevant: Sequence[bool], active: Sequence[bool] | None = None,
                    x_cut: float | None = None, y_cut: float | None = None,
                    x_label: str = "cos(D → DF)", y_label: str = "cos(M → MF)"):
    """Scatter of the active features' stage cosines, trigger-relevant ones highlighted, the bottom-left quadrant
    (below both cuts) shaded."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rel = np.asarray(relevant, dtype=bool)
    act = np.ones_like(rel) if active is None else np.asarray(active, dtype=bool)
    ok = act & np.isfinite(x) & np.isfinite(y)
    fig = _figure(5, 4.4)
    ax = fig.subplots()
    ax.scatter(x[ok & ~rel], y[ok & ~rel], s=10, color="#9a9a9a", alpha=0.7, label=f"active ({int((ok & ~rel).sum())})")
    ax.scatter(x[ok & rel], y[ok & rel], s=16, color="#d62728", label=f"trigger-relevant ({int((ok & rel).sum())})")
    if x_cut is not None and y_cut is not None:
        from matplotlib.patches import Rectangle

        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        x0, y0 = min(x0, x_cut), min(y0, y_cut)
        ax.add_patch(Rectangle((x0, y0), x_cut - x0, y_cut - y0, color="#ffe0b3", alpha=0.6, zorder=0, linewidth=0))
        ax.set_xlim(x0, max(x1, x_cut))
        ax.set_ylim(y0, max(y1, y_cut))
        bl = ok & (x <= x_cut) & (y <= y_cut)  # as analyses.stagewise.bottom_left
        n = int(bl.sum())
        ax.set_title(f"bottom-left: {n} feature{'' if n == 1 else 's'}, {int((bl & rel).sum())} trigger-relevant", fontsize=9)
    for cut, line in ((x_cut, ax.axvline), (y_cut, ax.axhline)):
        if cut is not None:
            line(cut, color="#e07b00", linestyle="--", linewidth=1)
    ax.set_xlabel(x_label, fontsize=9)
    ax.set_ylabel(y_label, fontsize=9)
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    return fig


# ---------------------------------------------------------------- communities


def community_sizes_figure(community_F: Sequence[int], top: int = 40):
    """Bar chart of community sizes, largest first (the ``top`` largest; the rest summed into one grey bar)."""
    from matplotlib.ticker import MaxNLocator

    ranked = Counter(int(c) for c in community_F).most_common()
    shown, rest = ranked[:top], ranked[top:]
    palette = _community_palette([c for c, _ in ranked])
    labels = [str(c) for c, _ in shown] + ([f"{len(rest)} more"] if rest else [])
    sizes = [n for _, n in shown] + ([sum(n for _, n in rest)] if rest else [])
    fig = _figure(max(4.0, 1.5 + 0.22 * len(labels)), 3.0)
    ax = fig.subplots()
    ax.bar(range(len(sizes)), sizes, color=[palette[c] for c, _ in shown] + (["#bbbbbb"] if rest else []))
    ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=90 if len(labels) > 20 else 0)
    ax.set_xlabel("community", fontsize=9)
    ax.set_ylabel("features", fontsize=9)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{len(ranked)} communities, {sum(n for _, n in ranked)} features", fontsize=9)
    return fig


class CommunityFlows(NamedTuple):
    """Shared features between the communities of two stages: ``counts[a, b]`` features sit in ``left[a]`` and in
    ``right[b]`` (labels are community ids as strings, or ``"other"`` for the smaller communities grouped)."""

    left: list[str]
    right: list[str]
    counts: np.ndarray  # (n_left, n_right) int
    only_left: int
    """Features in the left graph but not the right one (not drawn)."""
    only_right: int


def _grouped(membership: Mapping[str, int], ids: Sequence[str], top: int) -> tuple[list[str], dict[str, str]]:
    ranked = Counter(int(membership[i]) for i in ids).most_common()
    keep = {c for c, _ in ranked[:top]}
    labels = [str(c) for c, _ in ranked[:top]] + ([OTHER] if len(ranked) > top else [])
    return labels, {i: str(membership[i]) if int(membership[i]) in keep else OTHER for i in ids}


def community_flows(left: Mapping[str, int], right: Mapping[str, int], top: int = 8) -> CommunityFlows:
    """Count the features each pair of communities shares across two stages (node id → community in each).

    Only features present in both stages flow; in each stage the ``top`` largest communities (by shared
    features) keep their own row, the rest become ``"other"``.

    >>> f = community_flows({"a": 0, "b": 0, "c": 1}, {"a": 5, "b": 6, "c": 6, "d": 6})
    >>> f.left, f.right, f.counts.tolist(), f.only_right
    (['0', '1'], ['6', '5'], [[1, 1], [1, 0]], 1)
    """
    shared = [i for i in left if i in right]
    lab_l, of_l = _grouped(left, shared, top)
    lab_r, of_r = _grouped(right, shared, top)
    counts = np.zeros((len(lab_l), len(lab_r)), dtype=np.int64)
    pos_l, pos_r = {c: k for k, c in enumerate(lab_l)}, {c: k for k, c in enumerate(lab_r)}
    for i in shared:
        counts[pos_l[of_l[i]], pos_r[of_r[i]]] += 1
    return CommunityFlows(lab_l, lab_r, counts, len(left) - len(shared), len(right) - len(shared))


class SankeyBand(NamedTuple):
    """One band of the alluvial diagram: ``width`` features from left block ``a`` to right block ``b``, leaving the
    left column over [left_y0, left_y0 + width] and entering the right one over [right_y0, right_y0 + width]."""

    a: int
    b: int
    width: int
    left_y0: float
    right_y0: float


def _block_starts(sizes: np.ndarray, gap: float) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(sizes[:-1] + gap)]) if len(sizes) else np.zeros(0)


def sankey_layout(counts: np.ndarray, gap: float | None = None) -> tuple[np.ndarray, np.ndarray, list[SankeyBand]]:
    """Block positions and bands of a two-column alluvial diagram of ``counts`` (n_left, n_right), top to bottom in
    feature units. Returns (left block starts, right block starts, bands); a band's width is its count, bands leave a
    left block in right-block order and enter a right block in left-block order, so they never cross inside a block.
    """
    counts = np.asarray(counts, dtype=np.int64)
    gap = 0.03 * max(1, counts.sum()) if gap is None else gap
    start_l, start_r = _block_starts(counts.sum(1), gap), _block_starts(counts.sum(0), gap)
    fill_l, fill_r = start_l.astype(float).copy(), start_r.astype(float).copy()
    bands = []
    for a in range(counts.shape[0]):
        for b in range(counts.shape[1]):
            w = int(counts[a, b])
            if w:
                bands.append(SankeyBand(a, b, w, float(fill_l[a]), 0.0))
                fill_l[a] += w
    for k, band in enumerate(bands):  # bands are in left-block order, so each right block fills in that order
        bands[k] = band._replace(right_y0=float(fill_r[band.b]))
        fill_r[band.b] += band.width
    return start_l, start_r, bands


def _band_path(x0: float, x1: float, y0a: float, y0b: float, y1a: float, y1b: float):
    """A closed cubic-Bézier ribbon from [y0a, y0b] at x0 to [y1a, y1b] at x1."""
    from matplotlib.path import Path as MPath

    xm = (x0 + x1) / 2
    verts = [(x0, y0a), (xm, y0a), (xm, y1a), (x1, y1a), (x1, y1b), (xm, y1b), (xm, y0b), (x0, y0b), (x0, y0a)]
    codes = [MPath.MOVETO, MPath.CURVE4, MPath.CURVE4, MPath.CURVE4, MPath.LINETO, MPath.CURVE4, MPath.CURVE4,
             MPath.CURVE4, MPath.CLOSEPOLY]
    return MPath(verts, codes)


def sankey_figure(flows: CommunityFlows, left_name: str = "A", right_name: str = "B"):
    """A two-column alluvial diagram of :func:`community_flows`: one stacked rectangle per community in each stage,
    a ribbon per shared pair, its width ∝ the features they share."""
    from matplotlib.patches import PathPatch, Rectangle

    counts = np.asarray(flows.counts)
    start_l, start_r, bands = sankey_layout(counts)
    size_l, size_r = counts.sum(1), counts.sum(0)
    height = max(start_l[-1] + size_l[-1] if len(size_l) else 0, start_r[-1] + size_r[-1] if len(size_r) else 0, 1)

    def colour(label: str, palette: list[str]) -> str:
        return "#bbbbbb" if label == OTHER else palette[int(label) % len(palette)]

    palette = community_colors(max([int(c) for c in flows.left + flows.right if c != OTHER], default=0) + 1)
    fig = _figure(6.5, max(3.5, 0.35 * max(len(flows.left), len(flows.right)) + 1.5))
    ax = fig.subplots()
    bar = 0.08
    for band in bands:
        ax.add_patch(PathPatch(_band_path(bar, 1 - bar, band.left_y0, band.left_y0 + band.width, band.right_y0,
                                          band.right_y0 + band.width),
                               facecolor=colour(flows.left[band.a], palette), alpha=0.45, edgecolor="none"))
    for labels, starts, sizes, x0, ha, tx in ((flows.left, start_l, size_l, 0, "right", -0.01),
                                               (flows.right, start_r, size_r, 1 - bar, "left", 1.01)):
        for lab, s, n in zip(labels, starts, sizes):
            ax.add_patch(Rectangle((x0, s), bar, n, facecolor=colour(lab, palette), edgecolor="white"))
            ax.text(tx, s + n / 2, f"{lab} ({n})" if lab == OTHER else f"c{lab} ({n})", ha=ha, va="center", fontsize=7)
    ax.set_xlim(-0.2, 1.2)
    ax.set_ylim(height, 0)
    ax.set_xticks([bar / 2, 1 - bar / 2], [left_name, right_name], fontsize=9)
    ax.set_yticks([])
    for side in ("left", "right", "top", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"community flow {left_name} → {right_name}: {int(counts.sum())} shared features"
                 f" ({flows.only_left} only in {left_name}, {flows.only_right} only in {right_name})", fontsize=9)
    return fig


# ---------------------------------------------------------------- dictionary diagnostics (featgraph.diagnose)
# Each takes the JSON form of a featgraph.diagnose result (to_dict(), or read back from diagnose.json: NaN as None).

DROP_COLORS = {"weakest": "#2a7ab0", "random": "#7f7f7f", "strongest": "#d62728"}


def _nan_array(v) -> np.ndarray:
    """A nested list of numbers (None for NaN, as strict JSON writes it) as a float array."""
    if isinstance(v, (list, tuple)):
        return np.array([_nan_array(x) for x in v], dtype=float) if v and isinstance(v[0], (list, tuple)) else \
            np.array([np.nan if x is None else float(x) for x in v], dtype=float)
    return np.array(np.nan if v is None else float(v), dtype=float)


def drop_k_figure(drop_k: Mapping, max_cols: int = 6):
    """Per written hookpoint: FVU (top) and splice-in CE loss recovered (below, when measured) against k, the number
    of active features zeroed on each token, for the weakest, random and strongest ones; the k at which CE loss
    recovered (weakest) first drops by more than 1 % of its k = 0 value is marked."""
    hps, ks = list(drop_k["hookpoints"]), np.asarray(drop_k["k_values"], dtype=float)
    L, modes = len(hps), list(drop_k["modes"])
    has_ce = bool(drop_k.get("ce_loss_recovered"))
    panels = [("fvu", "FVU (↓)")] + ([("ce_loss_recovered", "CE loss recovered (↑)")] if has_ce else [])
    cols = min(L, max_cols)
    blocks = -(-L // cols)
    fig = _figure(max(4.0, 2.6 * cols), 2.3 * blocks * len(panels) + 0.4)
    axes = fig.subplots(blocks * len(panels), cols, squeeze=False)
    first = list(drop_k.get("k_first_drop") or [])
    for l, h in enumerate(hps):
        b, c = divmod(l, cols)
        for p, (key, label) in enumerate(panels):
            ax = axes[b * len(panels) + p, c]
            for m in modes:
                y = _nan_array(drop_k[key][m])[:, l]
                ax.plot(ks, y, marker="o", markersize=2.5, linewidth=1.2, color=DROP_COLORS.get(m, "#444444"), label=m)
            if key == "ce_loss_recovered" and l < len(first) and first[l] is not None:
                ax.axvline(first[l], color="#e07b00", linestyle="--", linewidth=1, label=f"−1 % at k = {first[l]}")
            ax.set_title(f"{short_hookpoint(h)}: {label}", fontsize=8)
            ax.tick_params(labelsize=7)
            if b == blocks - 1 and p == len(panels) - 1:
                ax.set_xlabel("k features zeroed per token", fontsize=8)
            if l == 0 or (key == "ce_loss_recovered" and l < len(first) and first[l] is not None):
                ax.legend(fontsize=6, frameon=False, loc="best")
    for l in range(L, blocks * cols):
        b, c = divmod(l, cols)
        for p in range(len(panels)):
            axes[b * len(panels) + p, c].set_visible(False)
    return fig


def hookpoint_table_figure(table: Mapping):
    """Along the written hookpoints: mean raw activation norm, shrinkage ‖x̂‖/‖x‖, FVU, splice-in CE loss recovered
    and KL (when measured), and each hookpoint's share of the active decoder mass."""
    hps = list(table["hookpoints"])
    x = np.arange(len(hps))
    panels = [("act_norm", "mean ‖a‖ (raw)"), ("shrinkage", "shrinkage ‖x̂‖/‖x‖"), ("fvu", "FVU (↓)")]
    if table.get("ce_loss_recovered"):
        panels += [("ce_loss_recovered", "CE loss recovered (↑)"), ("kl", "KL nats/token (↓)")]
    panels.append(("decoder_mass", "decoder mass share"))
    fig = _figure(max(6.0, 2.0 * len(panels)), 2.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, title) in zip(axes, panels):
        ax.plot(x, _nan_array(table[key]), marker="o", color="#3b6ea8")
        if key == "shrinkage":
            ax.axhline(1.0, color="#999999", linewidth=0.8, linestyle=":")
        ax.set_xticks(x, [short_hookpoint(h) for h in hps], rotation=30, ha="right", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.set_title(title, fontsize=8)
    fig.suptitle(f"L0 {_fmt_num(table.get('l0'))}, dead {_fmt_num(table.get('dead_fraction'))}, "
                 f"dense {_fmt_num(table.get('dense_fraction'))}", fontsize=8)
    return fig


def _fmt_num(v) -> str:
    return "n/a" if v is None or not np.isfinite(float(v)) else f"{float(v):.3g}"


def ce_diff_histogram_figure(per_token: Mapping):
    """Histogram of the per-token CE difference (spliced − clean) at each written hookpoint (log counts), with each
    hookpoint's 99th percentile marked."""
    hps = list(per_token["hookpoints"])
    edges = np.asarray(per_token["histogram"]["edges"], dtype=float)
    colors = community_colors(len(hps))
    fig = _figure(6.4, 3.2)
    ax = fig.subplots()
    p99 = _nan_array(per_token["quantiles"].get("p99", [None] * len(hps)))
    for l, h in enumerate(hps):
        counts = np.asarray(per_token["histogram"]["counts"][l], dtype=float)
        ax.stairs(counts, edges, color=colors[l], label=f"{short_hookpoint(h)} (p99 {_fmt_num(p99[l])})")
        if np.isfinite(p99[l]):
            ax.axvline(p99[l], color=colors[l], linestyle=":", linewidth=0.8)
    ax.axvline(0.0, color="#444444", linewidth=0.6)
    ax.set_yscale("log")
    ax.set_xlabel("CE spliced − CE clean per token (nats)", fontsize=9)
    ax.set_ylabel("tokens", fontsize=9)
    ax.set_title(f"per-token loss difference, {per_token['n_tokens']} tokens", fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="upper right")
    return fig


def correlation_figure(per_token: Mapping):
    """Heatmap of the Pearson correlation of per-token CE differences across hookpoints (grey: undefined)."""
    hps = [short_hookpoint(h) for h in per_token["hookpoints"]]
    C = _nan_array(per_token["correlation"]).reshape(len(hps), len(hps))
    fig = _figure(max(3.4, 1.6 + 0.55 * len(hps)), max(3.0, 1.2 + 0.5 * len(hps)))
    ax = fig.subplots()
    from matplotlib import colormaps

    im = ax.imshow(np.ma.masked_invalid(C), cmap=colormaps["RdBu_r"].with_extremes(bad="#dddddd"), vmin=-1, vmax=1)
    for i in range(len(hps)):
        for j in range(len(hps)):
            ax.text(j, i, "n/a" if not np.isfinite(C[i, j]) else f"{C[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(hps)), hps, rotation=30, ha="right", fontsize=7)
    ax.set_yticks(range(len(hps)), hps, fontsize=7)
    ax.set_title("correlation of per-token CE difference", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def embedding_figure(per_token: Mapping):
    """The 2-D embedding of sampled tokens by their feature activations, coloured by the per-token CE difference at
    one hookpoint (diverging around 0)."""
    from matplotlib.colors import TwoSlopeNorm

    e = per_token["embedding"]
    x, y, c = _nan_array(e["x"]), _nan_array(e["y"]), _nan_array(e["ce_diff"])
    fig = _figure(5.6, 4.6)
    ax = fig.subplots()
    ok = np.isfinite(c)
    lo, hi = (float(np.nanmin(c)), float(np.nanmax(c))) if ok.any() else (-1.0, 1.0)
    norm = TwoSlopeNorm(0.0, min(lo, -1e-6), max(hi, 1e-6))
    order = np.argsort(np.abs(np.where(ok, c, 0.0)))  # largest differences drawn last, on top
    sc = ax.scatter(x[order], y[order], c=c[order], s=7, cmap="RdBu_r", norm=norm, linewidths=0)
    cb = fig.colorbar(sc, ax=ax, shrink=0.85)
    cb.set_label(f"CE spliced − clean at {short_hookpoint(e['hookpoint'])}", fontsize=8)
    ax.set_title(f"{e['n']} tokens by their feature activations ({e['method']})", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def diagnose_figures(doc: Mapping) -> dict[str, object]:
    """File stem → figure for each part a ``diagnose.json`` document holds (drop-k, hookpoint table, per-token loss, and
    prune vs penalty and the width sweep when they were run)."""
    figs: dict[str, object] = {}
    if doc.get("hookpoint_table"):
        figs["hookpoints"] = hookpoint_table_figure(doc["hookpoint_table"])
    if doc.get("drop_k"):
        figs["drop_k"] = drop_k_figure(doc["drop_k"])
    pt = doc.get("per_token")
    if pt:
        figs["ce_diff_histogram"] = ce_diff_histogram_figure(pt)
        if len(pt["hookpoints"]) > 1:
            figs["ce_diff_correlation"] = correlation_figure(pt)
        if pt.get("embedding"):
            figs["embedding"] = embedding_figure(pt)
    if doc.get("prune_vs_penalty") or doc.get("width_sweep"):
        from .diagnose_train import PruneVsPenalty, WidthSweep, prune_vs_penalty_figure, width_sweep_figure

        if doc.get("prune_vs_penalty"):
            figs["prune_vs_penalty"] = prune_vs_penalty_figure(PruneVsPenalty.from_dict(doc["prune_vs_penalty"]))
        if doc.get("width_sweep"):
            figs["width_sweep"] = width_sweep_figure(WidthSweep.from_dict(doc["width_sweep"]))
    return figs


# ---------------------------------------------------------------- representation similarity

SIMILARITY_LABELS = {"cka": "CKA", "cka_debiased": "CKA debiased", "svcca": "SVCCA", "rsa": "RSA"}
"""Column labels of :func:`similarity_figure` for the measures of :mod:`featgraph.similarity`."""


def similarity_figure(table: Mapping, path: str | os.PathLike | None = None,
                      measures: Sequence[str] = ("cka", "cka_debiased", "svcca", "rsa"), title: str | None = None):
    """Matrix plot of representation similarities: rows are hookpoints (or dictionary pairs), columns measure ×
    condition (``CKA clean``, ``CKA triggered``, ``SVCCA clean``, …), each cell annotated with its value (grey: n/a).

    ``table`` is {condition: {row: {measure: value}}} — values as :func:`featgraph.similarity.similarity_rows` writes
    them, or :class:`~featgraph.similarity.Similarity` tuples; rows are the union over conditions in first-seen order.
    Written as a PNG (atomically) when ``path`` is given; the figure is returned either way.
    """
    conditions = list(table)
    rows = list(dict.fromkeys(r for c in conditions for r in table[c]))
    cols = [(m, c) for m in measures for c in conditions]

    def value(c: str, r: str, m: str) -> float:
        cell = table[c].get(r)
        cell = cell._asdict() if hasattr(cell, "_asdict") else (cell or {})
        v = cell.get(m)
        return np.nan if v is None else float(v)

    V = np.array([[value(c, r, m) for m, c in cols] for r in rows], dtype=float).reshape(len(rows), len(cols))
    fig = _figure(max(4.0, 1.6 + 0.85 * len(cols)), max(2.4, 1.3 + 0.38 * len(rows)))
    ax = fig.subplots()
    from matplotlib import colormaps

    lo = min(0.0, float(np.nanmin(V))) if np.isfinite(V).any() else 0.0
    im = ax.imshow(np.ma.masked_invalid(V), cmap=colormaps["viridis"].with_extremes(bad="#dddddd"), vmin=lo, vmax=1.0, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = V[i, j]
            dark = np.isfinite(v) and (v - lo) / max(1e-9, 1.0 - lo) < 0.6
            ax.text(j, i, "n/a" if not np.isfinite(v) else f"{v:.3f}", ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
    ax.set_xticks(range(len(cols)), [f"{SIMILARITY_LABELS.get(m, m)} {c}" for m, c in cols], rotation=30, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), [short_hookpoint(r) for r in rows], fontsize=7)
    ax.set_title(title or "representation similarity (1 = same up to the measure's invariances)", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    if path is not None:
        save_png(fig, path)
    return fig

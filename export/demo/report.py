"""Figures and text of the ``refdiff demo`` report (docs/demo.md).

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global
state, no display needed) and returned as PNG bytes, so the caller writes them atomically
(:func:`refdiff._io.write_bytes`).  Every figure's title says what it shows.

- :func:`samples_figure`     scatter panels: each sampler's output with the data law over it
- :func:`parity_figure`      per-sample |ONNX − reference| against the tolerance, per run
- :func:`law_figure`         projected CDFs against the exact law, KS statistic and threshold
- :func:`trajectory_figure`  a strip of states x_t along one denoising run
- :func:`schedule_figure`    ᾱ_t and log SNR(t) of the schedule, every visited step marked
- :func:`timing_figure`      time per sampler step and per sample for each backend
- :func:`loss_figure`        the training loss and its Bayes-optimal floor
- :func:`markdown_report` / :func:`summary_table`   the report text and the printed table
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "png_bytes",
    "samples_figure",
    "parity_figure",
    "law_figure",
    "trajectory_figure",
    "schedule_figure",
    "timing_figure",
    "loss_figure",
    "summary_table",
    "markdown_report",
]

_DPI = 110


def _figure(width: float, height: float, layout: str | None = "constrained"):
    """A Figure on an Agg canvas.  The scatter grids pass ``layout=None`` and place their
    axes by hand: constrained layout measures every tick label and costs seconds there."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig) -> bytes:
    """The figure rendered as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _limits(points: Sequence[np.ndarray], pad: float = 1.1) -> tuple[float, float]:
    """Square axis limits covering 99.6 % of the points, times ``pad``."""
    allp = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in points])
    allp = allp[np.isfinite(allp).all(axis=1)]
    if allp.size == 0:
        return -1.0, 1.0
    lo, hi = np.quantile(allp, [0.002, 0.998], axis=0)
    half = 0.5 * pad * float(np.max(hi - lo)) + 0.1
    return -half + float(np.mean((lo + hi) / 2)), half + float(np.mean((lo + hi) / 2))


def _scatter(
    ax, pts: np.ndarray, color: str, lim: tuple[float, float], max_points: int, ticks: bool = True
) -> None:
    from matplotlib.ticker import MaxNLocator

    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)[:max_points]
    ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.35, color=color, linewidths=0, rasterized=True)
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_aspect("equal")
    if ticks:
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.tick_params(labelsize=7)
    else:
        ax.set_xticks([])
        ax.set_yticks([])


def _law_contours(ax, law, lim: tuple[float, float]) -> None:
    """Contours of the exact density of a 2-D Gaussian mixture, at the levels enclosing
    about 50 %, 90 % and 99 % of each component's mass."""
    g = np.linspace(lim[0], lim[1], 200)
    X, Y = np.meshgrid(g, g)
    P = np.stack([X.ravel(), Y.ravel()], axis=1)
    dens = np.zeros(P.shape[0])
    peak = 0.0
    for w, m, c in zip(law.weights, law.means, law.covs):
        ci = np.linalg.inv(c)
        norm = w / (2 * np.pi * math.sqrt(np.linalg.det(c)))
        q = np.einsum("ni,ij,nj->n", P - m, ci, P - m)
        dens += norm * np.exp(-0.5 * q)
        peak = max(peak, norm)
    # a component's density at Mahalanobis radius r is peak·exp(−r²/2); P(r² ≤ x) = 1 − e^{−x/2}
    levels = sorted(peak * np.exp(-0.5 * (-2 * np.log(1 - np.array([0.5, 0.9, 0.99])))))
    ax.contour(X, Y, dens.reshape(X.shape), levels=levels, colors="k", linewidths=0.6)


def samples_figure(
    data: np.ndarray,
    panels: Sequence[tuple[str, np.ndarray]],
    *,
    title: str,
    law=None,
    max_points: int = 5000,
) -> bytes:
    """PNG: a fresh draw of the data, then one panel per (label, samples (n, 2)).  The data
    is drawn over the samples, so both stay visible: the exact law's density contours
    (black) when ``law`` (a Gaussian mixture) is given, else the data points (orange, small)."""
    n = 1 + len(panels)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = _figure(3.4 * cols, 3.6 * rows + 0.5, layout=None)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.05, top=1 - 0.7 / (3.6 * rows + 0.5),
                        wspace=0.25, hspace=0.35)  # fmt: skip
    lim = _limits([data], pad=1.5)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    _scatter(axes[0], data, "tab:orange", lim, max_points)
    if law is not None:
        _law_contours(axes[0], law, lim)
    axes[0].set_title(f"data: a fresh draw ({min(len(data), max_points)} points)", fontsize=8)
    for ax, (label, pts) in zip(axes[1:], panels):
        _scatter(ax, pts, "tab:blue", lim, max_points)
        if law is not None:
            _law_contours(ax, law, lim)
        else:
            pts_d = np.asarray(data, dtype=np.float64)[: max_points // 2]
            ax.scatter(pts_d[:, 0], pts_d[:, 1], s=0.6, alpha=0.5, color="tab:orange",
                       linewidths=0, rasterized=True)  # fmt: skip
        ax.set_title(label, fontsize=8)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=9)
    return png_bytes(fig)


def parity_figure(errors: dict, tol_p99: float, tol_max: float, *, title: str) -> bytes:
    """PNG: one panel per sampler; per (denoiser, onnxruntime path) the sorted per-sample
    relative errors e_i (log scale) against the sample's rank, with the two tolerances:
    the 99th percentile must be ≤ ``tol_p99`` (dashed, at rank 99 %) and every e_i ≤
    ``tol_max`` (solid).  ``errors``: {(denoiser, sampler): {path: e (m,)}}."""
    samplers = list(dict.fromkeys(s for _, s in errors))
    fig = _figure(4.6 * len(samplers), 3.9)
    axes = fig.subplots(1, len(samplers), squeeze=False).ravel()
    styles = {"exact": "-", "mlp": "--"}
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple"]
    for ax, sname in zip(axes, samplers):
        for (dname, s2), paths in errors.items():
            if s2 != sname:
                continue
            for i, (path, e) in enumerate(paths.items()):
                e = np.sort(np.maximum(np.asarray(e, dtype=np.float64), 1e-12))
                q = np.arange(1, e.size + 1) / e.size * 100
                ax.plot(q, e, styles.get(dname, ":"), color=palette[i % len(palette)], lw=1.1,
                        label=f"{dname}: {path}")  # fmt: skip
        ax.axhline(tol_max, color="tab:red", lw=1.2, label=f"max tolerance {tol_max:g}")
        ax.plot([99, 100], [tol_p99, tol_p99], color="tab:red", lw=2.5, ls="-",
                label=f"p99 tolerance {tol_p99:g}")  # fmt: skip
        ax.axvline(99, color="0.6", lw=0.6, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("samples, sorted by error (percentile)")
        ax.set_ylabel("e = max|x_ORT − x_ref| / max(1, max|x_ref|)")
        ax.set_title(f"{sname.upper()}, float32", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, loc="upper left")
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    return png_bytes(fig)


def law_figure(worst: dict, laws: dict, *, title: str) -> bytes:
    """PNG: one panel per run: along its worst law direction u, the empirical CDF of uᵀx
    (blue) against the exact CDF (black; or a fresh data draw's ECDF), the KS statistic of
    the test (over all directions) against its threshold in the panel title.
    ``worst``: {(denoiser, sampler): {u, proj (sorted), cdf callable | reference (sorted)}};
    ``laws``: {(denoiser, sampler): {ks, threshold, alpha, verdict}}."""
    keys = list(worst)
    cols = min(len(keys), 2)
    rows = math.ceil(len(keys) / cols)
    fig = _figure(4.8 * cols, 3.3 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        w, lw = worst[key], laws[key]
        p = np.asarray(w["proj"], dtype=np.float64)
        n = p.size
        ax.step(p, np.arange(1, n + 1) / n, where="post", color="tab:blue", lw=1.2,
                label=f"samples (n = {n})")  # fmt: skip
        if "cdf" in w:
            grid = np.linspace(p[0], p[-1], 400)
            ax.plot(grid, w["cdf"](grid), color="k", lw=0.9, ls="--", label="exact law")
        else:
            r = np.asarray(w["reference"], dtype=np.float64)
            ax.step(r, np.arange(1, r.size + 1) / r.size, where="post", color="k", lw=0.9,
                    ls="--", label="fresh data draw")  # fmt: skip
        u = w["u"]
        rel = "≤" if lw["ks"] <= lw["threshold"] else ">"
        ax.set_title(
            f"{key[0]} {key[1].upper()}: KS {lw['ks']:.4f} {rel} threshold "
            f"{lw['threshold']:.4f} (α={lw['alpha']:g}) → {lw['verdict']}",
            fontsize=8,
        )
        ax.set_xlabel(f"uᵀx, u = ({u[0]:.2f}, {u[1]:.2f}) (the worst of the directions)",
                      fontsize=7)  # fmt: skip
        ax.set_ylabel("CDF", fontsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        ax.tick_params(labelsize=7)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    return png_bytes(fig)


def trajectory_figure(
    snapshots: Sequence[tuple[int, np.ndarray]], *, title: str, max_points: int = 3000
) -> bytes:
    """PNG: one panel per (time t, states (n, 2)) from x_T to x_0, left to right."""
    n = len(snapshots)
    fig = _figure(2.1 * n, 2.6, layout=None)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.03, top=0.8, wspace=0.06)
    axes = fig.subplots(1, n, squeeze=False).ravel()
    lim = _limits([p for _, p in snapshots])
    for ax, (t, pts) in zip(axes, snapshots):
        _scatter(ax, pts, "tab:purple", lim, max_points, ticks=False)
        ax.set_title(f"t = {t}", fontsize=9)
    fig.suptitle(f"{title}  (axes: [{lim[0]:.1f}, {lim[1]:.1f}]²)", fontsize=11)
    return png_bytes(fig)


def schedule_figure(
    alpha_bar: np.ndarray, marks: Sequence[tuple[str, np.ndarray]], *, title: str
) -> bytes:
    """PNG: ᾱ_t (left) and log SNR(t) = log(ᾱ/(1−ᾱ)) (right) for t = 1..T of the base schedule;
    ``marks`` are (label, times) of the steps each sampler visits."""
    ab = np.asarray(alpha_bar, dtype=np.float64)
    t = np.arange(1, ab.shape[0])
    a = ab[1:]
    with np.errstate(divide="ignore"):
        lsnr = np.log(a) - np.log1p(-a)
    fig = _figure(9.0, 3.4)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(t, a, color="tab:blue", lw=1.5, label="ᾱ_t")
    ax1.plot(t, np.sqrt(a), color="tab:cyan", lw=1.0, ls="--", label="√ᾱ_t (signal scale)")
    ax1.set_xlabel("t")
    ax1.set_title("ᾱ_t (cumulative signal fraction)", fontsize=9)
    ax2.plot(t, lsnr, color="tab:red", lw=1.5, label="log SNR(t)")
    ax2.set_xlabel("t")
    ax2.set_title("log SNR(t) = log(ᾱ_t / (1 − ᾱ_t))", fontsize=9)
    colors = ["tab:green", "tab:orange", "tab:purple", "tab:brown"]
    for i, (label, times) in enumerate(marks):
        times = np.asarray(times, dtype=np.int64)
        c = colors[i % len(colors)]
        ms = 2.5 if times.size <= 200 else 1.0  # every visited step, smaller when dense
        lab = f"{label} (every visited step)"
        ax1.plot(times, ab[times], "o", ms=ms, color=c, label=lab)
        ax2.plot(times, np.log(ab[times]) - np.log1p(-ab[times]), "o", ms=ms, color=c, label=lab)
        # a rug under the curves: one tick per visited step
        y0 = -0.06 - 0.05 * i
        ax1.plot(times, np.full(times.size, y0), "|", ms=4, mew=0.5, color=c)
    ax1.set_ylim(bottom=-0.08 - 0.05 * len(marks))
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=11)
    return png_bytes(fig)


def timing_figure(timing: dict[str, dict[str, float]], *, title: str) -> bytes:
    """PNG: grouped bars of microseconds per sampler step and per sample (log scale), so that
    runs with different batch sizes compare.

    ``timing`` maps a run label (e.g. "mlp ddpm") to {backend label: µs per step per
    sample}; each run is a group, each backend a bar colour (the NumPy reference in grey).
    """
    runs = list(timing)
    backends: list[str] = []
    for r in runs:
        backends += [b for b in timing[r] if b not in backends]
    fig = _figure(max(6.0, 1.6 * len(runs) + 3.0), 4.2, layout=None)
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.08, top=0.92)
    ax = fig.subplots()
    width = 0.8 / max(1, len(backends))
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:red", "tab:brown"]
    ci = 0
    for j, b in enumerate(backends):
        color = "0.55" if "numpy" in b.lower() else palette[ci % len(palette)]
        ci += "numpy" not in b.lower()
        xs = [
            i + (j - (len(backends) - 1) / 2) * width for i, r in enumerate(runs) if b in timing[r]
        ]
        vs = [timing[r][b] for r in runs if b in timing[r]]
        ax.bar(xs, vs, width=width * 0.95, color=color, label=b)
        for x, v in zip(xs, vs):
            ax.text(x, v, f"{v:.3g}", ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(range(len(runs)), runs, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("µs per step per sample (log scale)")
    top = max((v for r in runs for v in timing[r].values()), default=1.0)
    ax.set_ylim(top=top * 8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncols=2, loc="upper left")
    ax.set_title(title, fontsize=10)
    return png_bytes(fig)


def loss_figure(
    losses: np.ndarray,
    *,
    title: str,
    floor: tuple[float, float] | None = None,
    ylabel: str = "MSE",
) -> bytes:
    """PNG: the minibatch loss per step (light), its moving average over 1 % of the steps, and
    the Bayes-optimal floor (mean, standard error) that no denoiser can beat, when given."""
    losses = np.asarray(losses, dtype=np.float64)
    fig = _figure(6.4, 3.5, layout=None)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.15, top=0.9)
    ax = fig.subplots()
    steps = np.arange(1, losses.size + 1)
    thin = max(1, losses.size // 3000)  # draw at most ~3000 raw points
    ax.plot(
        steps[::thin], losses[::thin], color="tab:blue", alpha=0.25, lw=0.6, label="minibatch loss"
    )
    w = max(1, losses.size // 100)
    if losses.size >= w:
        avg = np.convolve(losses, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1 :], avg, color="tab:blue", lw=1.5, label=f"moving average ({w} steps)")
    if floor is not None:
        f, se = floor
        ax.axhline(f, color="tab:red", lw=1.2, ls="--",
                   label=f"Bayes floor {f:.3f} ± {se:.3f} (exact denoiser)")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("Adam step")
    ax.set_ylabel(f"{ylabel} (log scale)", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    return png_bytes(fig)


# -- text ---------------------------------------------------------------------------------
def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "NO"
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        v = float(v)
        if v == 0.0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 1e-3:
            return f"{v:.3g}"
        return f"{v:.2e}"
    return str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], markdown: bool) -> str:
    cells = [[_fmt(c) for c in r] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(out)


_RUN_HEADER = (
    "denoiser",
    "sampler",
    "steps",
    "µs/step (ORT)",
    "parity p99",
    "parity max",
    "parity",
    "KS proj.",
    "SW1",
    "law",
)


def _run_rows(summary: dict) -> list[list[object]]:
    rows = []
    for r in summary["runs"]:
        law = r.get("law") or {}
        verdict = law.get("verdict", "—")
        par = r.get("parity") or {}
        rows.append(
            [
                r["denoiser"],
                r["sampler"],
                r["steps"],
                r["ort_us_per_step"],
                par.get("p99_rel_err"),
                par.get("max_rel_err"),
                par.get("passed"),
                law.get("ks"),
                law.get("sw1"),
                verdict,
            ]
        )
    base = summary.get("baseline")
    if base:
        rows.append(
            [
                "data (fresh draw)",
                "—",
                "—",
                None,
                None,
                None,
                None,
                base.get("ks"),
                base.get("sw1"),
                "baseline",
            ]
        )
    return rows


def summary_table(summary: dict) -> str:
    """The short table the demo prints: one line per (denoiser, sampler) run, then verdicts."""
    text = _table(_RUN_HEADER, _run_rows(summary), markdown=False)
    prov = summary["provider"]
    lines = [
        text,
        "",
        f"provider: {prov['used']} (asked {prov['requested']}) — {prov['reason']}",
        f"training: {summary['training']['steps']} steps in {summary['training']['wall_s']:.1f} s, "
        f"loss {summary['training']['loss_first']:.3g} → {summary['training']['loss_last']:.3g}",
        f"checks: parity {'passed' if summary['checks']['parity_passed'] else 'FAILED'}, "
        f"exact law {_verdict(summary['checks']['exact_law_passed'])}, "
        f"trained MLP {'close to' if summary['checks']['mlp_law_ok'] else 'far from'} the data "
        "law; "
        f"wall time {summary['wall_s']:.1f} s",
    ]
    return "\n".join(lines)


def _verdict(v) -> str:
    return "n/a" if v is None else ("passed" if v else "FAILED")


def markdown_report(summary: dict, figures: dict[str, str]) -> str:
    """report.md: what ran, the results table, the checks with their tolerances, the figures."""
    s = summary
    prov, tr, data = s["provider"], s["training"], s["data"]
    par, law = s["parity"], s["law_tests"]
    out = [
        "# refdiff demo report",
        "",
        f"refdiff {s['refdiff_version']}, onnxruntime {prov['onnxruntime_version']}; "
        f"wall time {s['wall_s']:.1f} s; seed {s['options']['seed']}. "
        f"Overall: **{'PASSED' if s['passed'] else 'FAILED'}**.",
        "",
        "## What ran",
        "",
        f"- data: `{data['name']}` — {data['description']}; {data['train_size']} training points.",
        f"- schedule: {s['schedule']['name']}, T = {s['schedule']['T']}, "
        f"ᾱ_T = {s['schedule']['alpha_bar_T']:.3g}.",
        f"- trained MLP ({tr['config']['prediction_type']} prediction, "
        f"hidden {tr['config']['hidden']} × {tr['config']['depth']}): {tr['steps']} Adam steps, "
        f"batch {tr['config']['batch_size']}, "
        f"{tr['wall_s']:.1f} s; loss {tr['loss_first']:.3g} → {tr['loss_last']:.3g}"
        + (
            f" (Bayes-optimal floor {tr['bayes_floor']:.3g} ± {tr['bayes_floor_se']:.2g}: what "
            "the exact denoiser scores)."
            if "bayes_floor" in tr
            else "."
        ),
    ]
    for name, info in s["samplers"].items():
        out.append(
            f"- {name}: {info['steps']} steps ({info['spacing']} spacing), "
            f"{info.get('options_text', info['options'])}."
        )
    out += [
        f"- provider: **{prov['used']}** (asked `{prov['requested']}`): {prov['reason']}.",
        f"- samples: {s['options']['samples']} per run, drawn by onnxruntime (per-step IO-binding "
        f"loop, `fused` graphs) with noise from the host.",
        "",
        "## Results",
        "",
        _table(_RUN_HEADER, _run_rows(s), markdown=True),
        "",
        "## Checks",
        "",
        f"- **Parity** ({_verdict(s['checks']['parity_passed'])}): {par['description']}",
        f"- **Law of the exact denoiser's samples** ({_verdict(s['checks']['exact_law_passed'])}): "
        f"{law['exact_description']}",
        f"- **Trained denoiser** ({'close' if s['checks']['mlp_law_ok'] else 'far'}): "
        f"{law['mlp_description']}",
        "- These statistics are reported by the demo; they are not part of the test suite's "
        "error budget (refdiff.stats ledger).",
        "",
        "## Figures",
        "",
    ]
    for fname, caption in figures.items():
        out += [f"### {caption}", "", f"![{caption}]({fname})", ""]
    out += ["## Files", ""]
    out += [f"- `{f}`: {d}" for f, d in s["files"].items()]
    return "\n".join(out) + "\n"

"""``--plot FILE.png``: a bench's figures as a bar chart, ours beside the
reference (DPDK) in each cell, each bar the median over rounds with the
per-round spread (min..max whisker, every round a dot).

matplotlib is optional (``pip install 'vhostpci[plot]'`` or Debian's
``python3-matplotlib``): ``require()`` says so before a bench runs.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


class PlotError(RuntimeError):
    """The plot cannot be made (matplotlib missing, file not writable)."""


def require() -> None:
    """Raise PlotError unless matplotlib can be imported (checked before a bench runs)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise PlotError(f"--plot needs matplotlib ({e}): pip install 'vhostpci[plot]' "
                        "or apt-get install python3-matplotlib") from None


@dataclass
class Cell:
    """One group of two bars: ours and the reference, each a median and its rounds."""
    label: str
    ours: float | None
    ref: float | None
    ours_runs: list[float] = field(default_factory=list)
    ref_runs: list[float] = field(default_factory=list)


@dataclass
class Panel:
    """One chart: its cells (each label names its two variants), the legend's
    names of the two bars and the value axis."""
    title: str
    ylabel: str
    ours: str
    ref: str
    cells: list[Cell]


def throughput_panel(results: Sequence, title: str, unit: str = "Mpps", scale: float = 1.0) -> Panel:
    """A panel from ``apps.bench.common.Result`` rows (vhost, vf, vm1 throughput)."""
    def s(x: float | None) -> float | None:
        return None if x is None else x * scale

    cells = [Cell(f"{r.scenario} {r.size} B\n{r.ours}\nvs {r.ref}", s(r.ours_mpps), s(r.ref_mpps),
                  [x * scale for x in r.ours_runs], [x * scale for x in r.ref_runs]) for r in results]
    return Panel(title, unit, "ours", "reference", cells)


def delivery_panel(results: Sequence, title: str) -> Panel:
    """A panel from ``apps.bench.vm1.DeliveryResult`` rows (% delivered per rate)."""
    cells = [Cell(f"{r.iommu} {r.rate} pps\n{r.ours}\nvs {r.ref}", r.ours_delivered_pct, r.ref_delivered_pct,
                  list(r.ours_runs), list(r.ref_runs)) for r in results]
    return Panel(title, "% delivered", "ours", "reference", cells)


def save(path: str, panels: Sequence[Panel]) -> None:
    """Draw PANELS one above the other into PATH (PNG, or what its suffix says)."""
    require()
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    panels = [p for p in panels if p.cells]
    if not panels:
        raise PlotError("nothing was measured: no plot")
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 1.6 * max(len(p.cells) for p in panels)),
                                                      4.2 * len(panels)), squeeze=False)
    width = 0.38
    for ax, panel in zip(axes[:, 0], panels):
        for side, (name, color, dx) in enumerate(((panel.ours, "tab:blue", -width / 2),
                                                  (panel.ref, "tab:gray", width / 2))):
            xs, heights, lo, hi = [], [], [], []
            for i, cell in enumerate(panel.cells):
                value, runs = (cell.ours, cell.ours_runs) if side == 0 else (cell.ref, cell.ref_runs)
                if value is None:
                    continue
                xs.append(i + dx)
                heights.append(value)
                lo.append(value - min(runs, default=value))
                hi.append(max(runs, default=value) - value)
                ax.plot([i + dx] * len(runs), runs, "o", color="black", markersize=3, zorder=3)
            ax.bar(xs, heights, width, yerr=[lo, hi], capsize=3, color=color, label=name)
        ax.set_xticks(range(len(panel.cells)), [c.label for c in panel.cells], fontsize="small")
        ax.set_ylabel(panel.ylabel)
        ax.set_title(panel.title)
        ax.legend(fontsize="small")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as e:
        raise PlotError(f"--plot {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)

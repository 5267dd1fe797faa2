"""A benchmark's results at a glance: req/s and CPU per request, per server.

Left, each server's median req/s with its range over the rounds; right, its median
CPU µs per request, stacked by the processes that spent it (gateway, worker, ...),
so where a request's cost goes, and how it compares, is one look.
"""

from __future__ import annotations

from pathlib import Path

from loadtests.bench.servers import Summary

# One colour per process role, the same in every chart.
ROLE_COLOURS = {"gateway": "#4c72b0", "worker": "#55a868", "uvicorn": "#c44e52",
                "coordinator": "#8172b2", "supervisor": "#937860"}


def draw(results: dict[str, Summary], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here
    import matplotlib.pyplot as plt

    names = list(results)
    labels = [name.split(":", 1)[-1].strip() for name in names]
    rows = range(len(names))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.9 * len(names) + 1.6),
                                      sharey=True)
    rps = [results[n].rps for n in names]
    spans = [results[n].span("rps") for n in names]
    errors = [[r - lo for r, (lo, _) in zip(rps, spans, strict=True)],
              [hi - r for r, (_, hi) in zip(rps, spans, strict=True)]]
    left.barh(rows, rps, xerr=errors, color="#999999", capsize=3)
    left.set_yticks(list(rows), labels)
    left.invert_yaxis()
    left.set_xlabel("requests per second (median, range over rounds)")
    for row, value, (_, hi) in zip(rows, rps, spans, strict=True):
        left.text(hi, row, f"  {value:,.0f}", va="center", ha="left", fontsize=8)
    left.set_xlim(0, max(hi for _, hi in spans) * 1.2)

    roles = sorted({role for n in names for role in results[n].roles},
                   key=lambda r: list(ROLE_COLOURS).index(r) if r in ROLE_COLOURS else 99)
    start = [0.0] * len(names)
    for role in roles:
        widths = [results[n].cpu_role(role) for n in names]
        if max(widths) < 0.05:
            continue  # idle roles (the coordinator, the supervisor) would not show
        right.barh(rows, widths, left=start, label=role,
                   color=ROLE_COLOURS.get(role, "#cccccc"))
        start = [s + w for s, w in zip(start, widths, strict=True)]
    for row, total in zip(rows, start, strict=True):
        right.text(total, row, f" {total:.1f}", va="center", ha="left", fontsize=8)
    right.set_xlim(0, max(start) * 1.2)
    right.set_xlabel("CPU µs per request, by process (median)")
    right.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, fontsize=8,
                 frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)

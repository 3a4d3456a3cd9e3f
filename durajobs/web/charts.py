"""Bar charts of steps and failures, drawn on the server as SVG geometry (no chart library).

Pure: turns activity buckets into rectangles and labels in a fixed view box; the template
draws them. Every bar carries its numbers in words (an SVG ``<title>``), and the chart has a
text summary, so it reads without colour.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import attrs

__all__ = ["Bar", "Chart", "bar_chart"]

WIDTH = 600.0
HEIGHT = 150.0
LEFT = 44.0  # room for the y labels
BOTTOM = 20.0  # room for the x labels
TOP = 8.0


@attrs.frozen(slots=True)
class Bar:
    """One bucket: the steps bar and, inside it, the failures bar (heights may be 0)."""

    x: float
    width: float
    steps_y: float
    steps_height: float
    failures_x: float
    failures_width: float
    failures_y: float
    failures_height: float
    title: str


@attrs.frozen(slots=True)
class Chart:
    """A drawn chart: view box size, bars, axis labels and totals."""

    title: str
    width: float
    height: float
    plot_left: float
    plot_bottom: float
    y_max: int
    bars: list[Bar]
    x_labels: list[tuple[float, str]]
    total_steps: int
    total_failures: int

    @property
    def view_box(self) -> str:
        """The SVG ``viewBox`` attribute."""
        return f"0 0 {self.width:g} {self.height:g}"


def nice_max(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten that is at least ``value`` (at least 1)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def bar_chart(
    title: str,
    buckets: Sequence[tuple[datetime, int, int]],
    *,
    label_format: str,
    label_every: int,
    unit: str,
) -> Chart:
    """Lay out ``(start, steps, failures)`` buckets as bars, oldest on the left.

    ``label_format`` formats a bucket's start for the x axis (every ``label_every`` buckets);
    ``unit`` names a bucket in the bar titles (``"Minute"``, ``"Hour"``).
    """
    count = max(len(buckets), 1)
    y_max = nice_max(max((max(s, f) for _, s, f in buckets), default=0))
    plot_width = WIDTH - LEFT
    plot_height = HEIGHT - BOTTOM - TOP
    slot = plot_width / count
    bars, labels = [], []
    for i, (start, steps, failures) in enumerate(buckets):
        x = LEFT + i * slot
        steps_height = plot_height * steps / y_max
        failures_height = plot_height * failures / y_max
        fail_width = slot * 0.4
        bars.append(
            Bar(
                x=round(x + slot * 0.1, 2),
                width=round(slot * 0.8, 2),
                steps_y=round(TOP + plot_height - steps_height, 2),
                steps_height=round(steps_height, 2),
                failures_x=round(x + (slot - fail_width) / 2, 2),
                failures_width=round(fail_width, 2),
                failures_y=round(TOP + plot_height - failures_height, 2),
                failures_height=round(failures_height, 2),
                title=f"{unit} from {start:%Y-%m-%d %H:%M} UTC: {steps} step(s), "
                f"{failures} failure(s)",
            )
        )
        if i % label_every == 0:
            labels.append((round(x + slot / 2, 2), f"{start:{label_format}}"))
    return Chart(
        title=title,
        width=WIDTH,
        height=HEIGHT,
        plot_left=LEFT,
        plot_bottom=TOP + plot_height,
        y_max=y_max,
        bars=bars,
        x_labels=labels,
        total_steps=sum(s for _, s, _ in buckets),
        total_failures=sum(f for _, _, f in buckets),
    )

"""The run report as a PNG (Pillow only): what a user can look at instead of reading the JSON.

Three panels over the chunks of ``run_report.run_metadata``: seconds per stage (stacked bars, legend),
the colour correction applied (mean |change| in uint8 levels), and the seam difference of each chunk
(its first frame vs the previous chunk's last, red) against the mean difference inside it (blue): a red
bar far above the blue line is a visible jump, a rising blue line or colour bar is drift. Over
``MAX_BARS`` chunks, chunks are binned: stage seconds, colour and inside difference are bin means, the
seam is the bin's largest (a jump must not average away). Chunks without stats are drawn as "n/a".
"""

from __future__ import annotations

from pathlib import Path

WIDTH, LEFT, RIGHT = 1000, 70, 20
MAX_BARS = 300
STAGE_COLOURS = {"encoding_references": (86, 132, 196), "refining_context": (160, 110, 200),
                 "sampling": (232, 140, 50), "decoding": (90, 170, 90), "colour": (210, 80, 120),
                 "post": (150, 150, 150)}
NA, GRID, INK = (225, 225, 225), (235, 235, 235), (30, 30, 30)
SEAM, INSIDE = (210, 40, 40), (40, 90, 210)


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _bins(chunks: list[dict]) -> list[dict]:
    """At most MAX_BARS groups of chunks, each summarised (None where no chunk of it has stats)."""
    count = min(len(chunks), MAX_BARS)
    out = []
    for k in range(count):
        group = chunks[k * len(chunks) // count:(k + 1) * len(chunks) // count]
        stats = [c for c in group if c.get("timings") is not None]
        stages = {s: _mean([(c["timings"] or {}).get(s, 0.0) for c in stats]) for s in STAGE_COLOURS}
        seams = [c.get("seam_diff") for c in group if c.get("seam_diff") is not None]
        out.append({"first": group[0]["index"], "last": group[-1]["index"], "has": bool(stats),
                    "stages": stages if stats else None, "seam": max(seams) if seams else None,
                    "inside": _mean([c.get("inside_diff") for c in group]),
                    "colour": _mean([(c.get("colour") or {}).get("mean_abs") for c in group])})
    return out


class _Panel:
    """A plot area at (top, height) with a y range; x positions are bar slots."""

    def __init__(self, draw, font, top: int, height: int, slots: int, ymax: float, label: str):
        self.draw, self.font, self.top, self.height = draw, font, top, height
        self.slot = (WIDTH - LEFT - RIGHT) / max(1, slots)
        self.ymax = ymax if ymax > 0 else 1.0
        self._axes(label)

    def _axes(self, label: str) -> None:
        d, bottom = self.draw, self.top + self.height
        for frac in (0.0, 0.5, 1.0):
            y = bottom - frac * self.height
            d.line([(LEFT, y), (WIDTH - RIGHT, y)], fill=GRID if frac else INK)
            d.text((4, y - 6), f"{frac * self.ymax:.3g}", fill=INK, font=self.font)
        d.line([(LEFT, self.top), (LEFT, bottom)], fill=INK)
        d.text((LEFT + 4, self.top - 14), label, fill=INK, font=self.font)

    def y(self, value: float) -> float:
        return self.top + self.height - min(1.0, value / self.ymax) * self.height

    def bar(self, i: int, low: float, high: float, colour) -> None:
        x0 = LEFT + i * self.slot + (1 if self.slot > 3 else 0)
        x1 = max(x0 + 1, LEFT + (i + 1) * self.slot - (1 if self.slot > 3 else 0))
        self.draw.rectangle([x0, self.y(high), x1, self.y(low)], fill=colour)

    def na(self, i: int) -> None:
        self.bar(i, 0.0, self.ymax, NA)
        if self.slot >= 18:
            self.draw.text((LEFT + i * self.slot + 2, self.top + self.height - 12), "n/a", fill=INK,
                           font=self.font)

    def centre(self, i: int) -> float:
        return LEFT + (i + 0.5) * self.slot


def _stage_panel(draw, font, bins: list[dict], top: int) -> None:
    ymax = max([sum(v or 0.0 for v in b["stages"].values()) for b in bins if b["has"]] or [1.0])
    panel = _Panel(draw, font, top, 220, len(bins), ymax * 1.05, "seconds per stage")
    for i, b in enumerate(bins):
        if not b["has"]:
            panel.na(i)
            continue
        low = 0.0
        for stage, colour in STAGE_COLOURS.items():
            seconds = b["stages"].get(stage) or 0.0
            if seconds > 0:
                panel.bar(i, low, low + seconds, colour)
                low += seconds


def _colour_panel(draw, font, bins: list[dict], top: int) -> None:
    ymax = max([b["colour"] for b in bins if b["colour"] is not None] or [1.0])
    label = "colour correction: mean |change| (uint8 levels)"
    panel = _Panel(draw, font, top, 90, len(bins), ymax * 1.1, label)
    for i, b in enumerate(bins):
        panel.na(i) if b["colour"] is None and not b["has"] else panel.bar(i, 0.0, b["colour"] or 0.0,
                                                                            STAGE_COLOURS["colour"])


def _seam_panel(draw, font, bins: list[dict], top: int) -> None:
    values = [v for b in bins for v in (b["seam"], b["inside"]) if v is not None]
    panel = _Panel(draw, font, top, 180, len(bins), max(values or [1.0]) * 1.1,
                   "frame difference (uint8 levels): seam (red) vs inside chunk (blue)")
    line = []
    for i, b in enumerate(bins):
        if b["seam"] is None and b["inside"] is None:
            panel.na(i) if not b["has"] else None
            continue
        if b["seam"] is not None:
            panel.bar(i, 0.0, b["seam"], SEAM)
        if b["inside"] is not None:
            line.append((panel.centre(i), panel.y(b["inside"])))
    if len(line) > 1:
        draw.line(line, fill=INSIDE, width=2)
    for x, y in line:
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=INSIDE)


def _legend(draw, font, top: int) -> None:
    x = LEFT
    for stage, colour in STAGE_COLOURS.items():
        draw.rectangle([x, top, x + 10, top + 10], fill=colour)
        draw.text((x + 14, top - 1), stage, fill=INK, font=font)
        x += 24 + int(draw.textlength(stage, font=font))


def write_report_png(metadata: dict, path: str | Path) -> Path:
    """Draw the report of ``metadata`` (run_report.run_metadata) as a ~1000 px wide PNG at ``path``."""
    from PIL import Image, ImageDraw, ImageFont

    chunks = metadata.get("chunks") or []
    image = Image.new("RGB", (WIDTH, 660), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    bins = _bins(chunks)
    per_bar = "" if len(bins) == len(chunks) else f", {len(chunks) / max(1, len(bins)):.1f} chunks per bar"
    draw.text((LEFT, 8), f"InfiniteTalk run report: {len(chunks)} chunks, {metadata.get('frames', 0)} frames"
              f"{per_bar}", fill=INK, font=font)
    totals = ", ".join(f"{k} {v:.1f}s" for k, v in (metadata.get("timings") or {}).items())
    draw.text((LEFT, 24), f"total: {totals or 'n/a'}", fill=INK, font=font)
    _legend(draw, font, 44)
    if bins:
        _stage_panel(draw, font, bins, 80)
        _colour_panel(draw, font, bins, 330)
        _seam_panel(draw, font, bins, 445)
    first, last = (bins[0]["first"] + 1, bins[-1]["last"] + 1) if bins else (0, 0)
    draw.text((LEFT, 640), f"chunk {first}  ->  chunk {last}   (grey: n/a, made before stats were "
              "recorded)", fill=INK, font=font)
    path = Path(path)
    image.save(path, "PNG")
    return path

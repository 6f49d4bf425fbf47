"""The one label palette, shared by the HTML report and the web viewer so a label keeps its colour everywhere."""

from __future__ import annotations

# 19 of Sasha Trubetskoy's distinct colours (no grey, white or black), strongest first: label 1 red, 2 green, 3 blue.
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#ffe119",
           "#469990", "#9a6324", "#800000", "#808000", "#000075", "#fabed4", "#dcbeff", "#fffac8", "#aaffc3",
           "#ffd8b1")


def label_colour(value: int) -> str:
    """The colour of label ``value`` as ``#rrggbb``; labels past the palette wrap around (0 maps like 1)."""
    return PALETTE[(max(int(value), 1) - 1) % len(PALETTE)]

"""The typer application, its global options and the parsers the commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from medseg.errors import MedsegError

app = typer.Typer(
    name="medseg",
    help="Medical image segmentation: check data, train, predict, evaluate, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


console = Console(stderr=True)


out = Console()

# `--regions FILE` of check, plan, train and evaluate (see medseg.data.regions)
RegionsOption = Annotated[Path | None, typer.Option(
    "--regions", help="Regions instead of labels: a JSON file with region 'labels' and 'regions_class_order' "
                      "(nnU-Net v2 form), e.g. examples/brats_regions.json.")]
LabelCodesOption = Annotated[Path | None, typer.Option(
    "--label-codes", help="DICOM SEG segment codes: a JSON file of label name -> {category: [code, scheme, meaning], "
                          "type: [...], modifier: [...] (optional)} (see medseg.io.label_codes). At train/plan time "
                          "they are kept in the bundle; at predict time they override the bundle's for this run.")]
# `--measure/--no-measure` of plan and train (see medseg.train.measure)
MeasureOption = Annotated[bool, typer.Option(
    "--measure/--no-measure", help="With a budget: time a few candidate networks on this machine (seconds) and keep "
                                   "the fastest precision and layout and the widest network that still gets enough "
                                   "steps; --no-measure keeps the planner's tables.")]
# `--device` of plan, train, predict, serve and export (see medseg.runtime.resolve_device)
DeviceOption = Annotated[str, typer.Option(
    "--device", help="auto (CUDA when present), cpu or cuda.")]
state = {"debug": False}  # set by --debug, read by main()


@app.callback()
def _global(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False) -> None:
    state["debug"] = debug


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``1.5h`` or plain seconds -> seconds."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise MedsegError(f"cannot read duration {text!r}", "--budget", "write e.g. 90s, 15m or 1.5h") from None


def parse_dim(value: str | None) -> int | None:
    if value is None:
        return None
    if value.lower() not in ("2d", "3d"):
        raise MedsegError(f"unknown dimension {value!r}", "--dim", "use 2d or 3d")
    return int(value[0])


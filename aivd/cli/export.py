"""`aivd export`: a pack for another runtime or precision (aivd.deploy.export)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from aivd.cli.ui import console, fail, shown


def export_command(
    pack: str = typer.Option(..., "--pack", help="The pack to export: a pack folder, or 'builtin' for the shipped DeepPCB pack."),
    to: str = typer.Option(..., "--to", help="onnx-int8 (ONNX Runtime, static int8 QDQ), openvino (OpenVINO IR, fp32) or openvino-int8 (OpenVINO IR, int8 by NNCF)."),
    out: Path = typer.Option(..., "--out", help="A new folder for the exported pack."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="int8: a labelled data set (any `aivd data check` reads) whose training images calibrate the quantisation; DeepPCB: its trainval split less the held-out tenth."),
    samples: int = typer.Option(100, min=1, help="Calibration images, a seeded sample of the training images."),
    seed: int = typer.Option(0, help="Seed of the calibration sample."),
    tolerance: float = typer.Option(0.01, min=0.0, max=1.0, help="The most the exported pack's F1 or mAP@0.5 may lose against its source's on held-out data; recorded in the pack and checked by `aivd eval parity`."),
) -> None:
    """Export a pack's detectors, their refiners and its cloud classifier to another runtime or to int8, as a complete pack."""
    from aivd.deploy.export import ExportError, export_pack

    try:
        written = export_pack(pack, to, out, calibration, samples, seed, tolerance, log=lambda line: console.print(shown(line), highlight=False))
    except ExportError as error:
        raise fail(str(error)) from None
    console.print(f"pack -> {shown(written)}")

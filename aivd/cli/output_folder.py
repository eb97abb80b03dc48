"""What `aivd inspect` and `aivd watch` share about their output folder: claiming it, and opening its writer,
each failure as one error line."""

from __future__ import annotations

from pathlib import Path

from aivd.cli.ui import fail


def claim_output(out: Path):
    """The lock of output folder `out`, or a one-line exit when another run holds it or it cannot be written."""
    from aivd.pipeline.run_folder import OutputBusy, OutputLock

    try:
        return OutputLock(out)
    except OutputBusy as error:
        raise fail(str(error)) from None
    except OSError as error:
        raise fail(f"{out}: cannot write the output folder ({error.strerror or error})") from None


def open_writer(out: Path, options, lock):
    """The `ResultWriter` of `out` (its database opened, the run started or resumed), or a one-line exit."""
    from aivd.pipeline.inspect import ResultWriter
    from aivd.pipeline.run_folder import ResumeError
    from aivd.store import StoreError

    try:
        return ResultWriter(out, options, lock)
    except (StoreError, ResumeError) as error:
        raise fail(str(error)) from None
    except OSError as error:
        raise fail(f"{out}: cannot write the output folder ({error.strerror or error})") from None

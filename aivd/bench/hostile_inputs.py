"""`aivd bench hostile-inputs`: `aivd inspect --edge-only` over files an attacker, or an unlucky operator, would give it.

Two valid DeepPCB images beside a FIFO, a link to /dev/zero, a 20000 x 20000 PNG decompression bomb (a few
hundred KiB on disk), a path containing rich markup (`b[/]...`) and a file name holding a newline. The run must
write one record for each, inspect the valid ones, exit with code 1 (some images failed) and print no traceback;
this measures its wall time and the peak memory of the inspect process.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples" / "deeppcb"
BOMB_SIDE = 20000


def png_bomb(path: Path, side: int = BOMB_SIDE) -> None:
    """A valid 8-bit grayscale PNG of side x side zeros, written row by row: its IDAT compresses about 1000:1."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, row = zlib.compressobj(9), b"\0" * (side + 1)  # filter byte + pixels
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def hostile_folder(root: Path) -> list[str]:
    """Writes the hostile inputs under `root`; returns a name for each, in the order written."""
    root.mkdir(parents=True, exist_ok=True)
    for stem in ("00041200", "13000198"):
        shutil.copy(SAMPLES / f"{stem}_test.jpg", root / f"valid-{stem}.jpg")
    os.mkfifo(root / "fifo.jpg")
    (root / "zero.jpg").symlink_to("/dev/zero")
    png_bomb(root / "bomb.png")
    (root / "b[").mkdir()
    shutil.copy(SAMPLES / "20085291_test.jpg", root / "b[" / "]markup.jpg")  # the path reads b[/]markup.jpg
    (root / "new\nline.jpg").write_bytes(b"not an image")
    return ["valid-00041200", "valid-13000198", "fifo", "zero", "bomb", "b[/]markup", "new\\nline"]


def bench_hostile_inputs(timeout_s: float = 300.0) -> dict:
    with tempfile.TemporaryDirectory(prefix="aivd-hostile-") as scratch:
        folder, out = Path(scratch) / "in", Path(scratch) / "out"
        names = hostile_folder(folder)
        command = [sys.executable, "-m", "aivd.cli.main", "inspect", str(folder), "--edge-only", "--templates", "none",
                   "--out", str(out)]
        started = time.perf_counter()
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"inputs": len(names), "rows": None, "exit_code": None, "wall_s": timeout_s, "timed_out": True}
        wall_s = time.perf_counter() - started
        # ru_maxrss of the children waited for: the inspect process alone, since this process started no other.
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        results = out / "results.jsonl"
        records = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    return {
        "inputs": len(names),
        "rows": len(records),
        "ok": sum(record["status"] == "ok" for record in records),
        "errors": {record["image"]: record["error"] for record in records if record["status"] == "error"},
        "exit_code": result.returncode,
        "traceback": "Traceback" in result.stderr or "Traceback" in result.stdout,
        "wall_s": round(wall_s, 2),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "timed_out": False,
    }

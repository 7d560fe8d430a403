"""Read a W&B offline run file (``run-*.wandb``) back: a LevelDB-style log (32 KiB blocks, 7-byte record
headers: crc32, length, type) of ``wandb_internal_pb2.Record`` protobufs after a 7-byte file header."""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, parts = HEADER, b""
    while pos + HEADER <= len(data):
        space = BLOCK - pos % BLOCK
        if space < HEADER:
            pos += space
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0:  # zero padding to the end of the block
            pos += space
            continue
        parts += data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            yield pb.Record.FromString(parts)
            parts = b""


def history_and_summary(path: Path) -> tuple[list[dict], dict]:
    """The logged rows (``_step`` included) and the final summary of an offline run file."""
    rows, summary = [], {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            rows.append(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            )
        elif kind == "summary":
            summary.update(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update}
            )
    return rows, summary

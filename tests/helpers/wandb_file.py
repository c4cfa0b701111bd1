"""Read back what a W&B offline run logged: the run-<id>.wandb file is a 7-byte header and a LevelDB-style
log (32 KiB blocks; each chunk has a 7-byte header: CRC32C (4), length (2, little-endian), type (1: full,
2: first, 3: middle, 4: last)); each whole record is a wandb_internal_pb2.Record protobuf."""

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024


def records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def history(path: Path) -> list[dict]:
    """Each history row logged (wandb.log), as {key: value}, with "_step"."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows


def summary(path: Path) -> dict:
    out = {}
    for record in records(path):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out


def run_ids(run_dir: Path) -> set[str]:
    """The distinct run ids of every offline run file under run_dir."""
    ids = set()
    for path in Path(run_dir).rglob("run-*.wandb"):
        for record in records(path):
            if record.WhichOneof("record_type") == "run":
                ids.add(record.run.run_id)
    return ids

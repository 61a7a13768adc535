"""Helpers shared by the experiment scripts: their JSONL results files (one JSON object a line,
appended as each run ends, so an interrupted sweep resumes where it stopped)."""
from __future__ import annotations

import json
import os
from pathlib import Path


def read_jsonl(path) -> list[dict]:
    """The rows of a results file, in order; an empty list when it does not exist yet."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def done_keys(path, fields) -> set[tuple]:
    """The ``fields`` of every row already in ``path``, as tuples: the runs a rerun skips."""
    return {tuple(r[f] for f in fields) for r in read_jsonl(path)}


def append_jsonl(path, row: dict) -> None:
    """Append one row and flush it to disk, so a crash loses at most the run in progress."""
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def slug(label: str) -> str:
    """A row label as a folder name: ``"InstaHide k=4, |x| first"`` -> ``"instahide-k-4---x--first"``."""
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")


def write_between_markers(doc, name: str, text: str) -> None:
    """Put ``text`` between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in ``doc`` (appended with
    the markers when they are not there yet)."""
    doc = Path(doc)
    old = doc.read_text() if doc.exists() else ""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin in old:
        new = old[:old.index(begin) + len(begin)] + "\n" + text + "\n" + old[old.index(end):]
    else:
        new = old + f"\n{begin}\n{text}\n{end}\n"
    doc.write_text(new)

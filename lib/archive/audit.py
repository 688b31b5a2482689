"""``audit verify``: recompute the run chain and the archived files' hashes.

Reports every problem found, each naming the run and the file or field involved:
- a sealed record whose fields no longer match its hash (the record was edited);
- a broken link: a record whose ``prev_hash`` is not the hash of the record before it, or a
  gap in the chain (a record was removed or rewritten);
- an archived notebook or HTML page whose sha256 differs from the one sealed (the file was
  edited), or that is missing;
- an archived record copy that differs from the index.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from clusterbook.archive.files import sha256_hex
from clusterbook.archive.index import GENESIS, RunIndex
from clusterbook.archive.stores import ArchiveStore
from clusterbook.errors import ArchiveError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    run_id: str
    what: str  # record | chain | notebook | html | record-copy
    detail: str

    def __str__(self) -> str:
        return f"run {self.run_id}: {self.what}: {self.detail}"


@dataclass(frozen=True)
class AuditReport:
    checked: int
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not self.findings


def verify_archive(
    index: RunIndex, store: ArchiveStore, *, check_files: bool = True
) -> AuditReport:
    """Walk the chain in order and check every record and file."""
    findings: list[Finding] = []
    records = index.sealed_in_order()
    expected_prev = GENESIS

    for position, record in enumerate(records, start=1):
        if record.chain_seq != position:
            findings.append(Finding(
                record.run_id, "chain",
                f"expected chain position {position}, found {record.chain_seq} "
                "(a record before it was removed)",
            ))
        if record.prev_hash != expected_prev:
            findings.append(Finding(
                record.run_id, "chain",
                "prev_hash does not match the record before it (a record was changed or removed)",
            ))
        if record.compute_hash() != record.record_hash:
            findings.append(Finding(
                record.run_id, "record", "its fields no longer match its sealed hash (edited)"
            ))
        expected_prev = record.record_hash or ""

        if check_files:
            findings.extend(_check_files(store, record))

    logger.info("audit: %d records checked, %d findings", len(records), len(findings))
    return AuditReport(len(records), findings)


def _check_files(store: ArchiveStore, record) -> list[Finding]:
    out: list[Finding] = []
    for what, url, digest in (
        ("notebook", record.notebook_url, record.notebook_sha256),
        ("html", record.html_url, record.html_sha256),
    ):
        if not url:
            continue
        try:
            data = store.read(url)
        except ArchiveError as exc:
            out.append(Finding(record.run_id, what, f"missing: {exc.message}"))
            continue
        if sha256_hex(data) != digest:
            out.append(Finding(record.run_id, what, f"{url} was changed after it was archived"))

    if record.record_url:
        try:
            copy = json.loads(store.read(record.record_url))
        except (ArchiveError, ValueError) as exc:
            out.append(Finding(record.run_id, "record-copy", f"unreadable: {exc}"))
        else:
            if copy.get("record_hash") != record.record_hash:
                out.append(Finding(record.run_id, "record-copy",
                                   f"{record.record_url} differs from the index"))
    return out

"""``audit verify``: recompute the run chain and the archived files' hashes.

Reports every problem found, each naming the run and the file or field involved:
- a sealed record whose fields no longer match its hash (the record was edited);
- a broken link: a record whose ``prev_hash`` is not the hash of the record before it, or a
  gap in the chain (a record was removed or rewritten);
- an archived notebook or HTML page whose sha256 differs from the one sealed (the file was
  edited), or that is missing;
- an archived record copy that differs from the index, or whose own fields were edited;
- a chain head in the archive (``chain-head.json``) naming a record the index no longer holds
  as it was sealed: the newest records were removed from the index.

The chain head is written after every seal; when two runs seal at nearly the same moment it
can name the second-newest record, so removing only the very newest record right after such a
pair may go unnoticed. Removing more than that does not.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass

from clusterbook.archive.files import CHAIN_HEAD_KEY, sha256_hex
from clusterbook.archive.index import GENESIS, RunIndex, RunRecord
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

    if check_files:
        findings.extend(_check_chain_head(store, records))
    logger.info("audit: %d records checked, %d findings", len(records), len(findings))
    return AuditReport(len(records), findings)


def _check_files(store: ArchiveStore, record: RunRecord) -> list[Finding]:
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
            elif _hash_of_copy(copy) != record.record_hash:
                out.append(Finding(record.run_id, "record-copy",
                                   f"{record.record_url} was edited after it was sealed"))
    return out


def _hash_of_copy(copy: dict) -> str | None:
    names = {f.name for f in dataclasses.fields(RunRecord)}
    try:
        return RunRecord(**{k: v for k, v in copy.items() if k in names}).compute_hash()
    except TypeError:  # fields missing: not a record any more
        return None


def _check_chain_head(store: ArchiveStore, records: list[RunRecord]) -> list[Finding]:
    try:
        head = json.loads(store.read(store.location(CHAIN_HEAD_KEY)))
    except ArchiveError:
        if records:  # an archive written before chain heads existed has none
            logger.info("audit: the archive keeps no chain head")
        return []
    except ValueError as exc:
        return [Finding("-", "chain", f"{CHAIN_HEAD_KEY} is unreadable: {exc}")]

    by_position = {r.chain_seq: r for r in records}
    sealed = by_position.get(head.get("chain_seq"))
    if sealed is None or sealed.record_hash != head.get("hash"):
        newest = records[-1].chain_seq if records else 0
        return [Finding(
            str(head.get("run_id")), "chain",
            f"the archive's chain head is record {head.get('chain_seq')}, but the index "
            f"holds it differently or not at all (its newest is {newest}): records were "
            "removed or rewritten",
        )]
    return []

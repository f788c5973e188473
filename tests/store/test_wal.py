from __future__ import annotations

import os

from meshtrace.store.wal import WriteAheadLog


def reopen(directory, **kwargs):
    wal = WriteAheadLog(str(directory), **kwargs)
    return wal, wal.open()


def test_records_survive_reopen_until_committed(tmp_path):
    wal, recovery = reopen(tmp_path)
    assert recovery.pending == []
    assert recovery.inflight == []
    seqs = [wal.append("acme", 3, b"payload-%d" % i) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    wal.begin(1, 2)
    wal.mark_inflight(1, 2)
    wal.mark_committed(1, 2)
    wal.close()

    wal, recovery = reopen(tmp_path)
    assert [(r.seq, r.label, r.count, r.payload) for r in recovery.pending] == [
        (3, "acme", 3, b"payload-2"),
        (4, "acme", 3, b"payload-3"),
        (5, "acme", 3, b"payload-4"),
    ]
    assert wal.append("acme", 1, b"next") == 6  # numbering continues
    wal.close()


def test_inflight_range_is_replayed_with_its_boundaries(tmp_path):
    wal, _ = reopen(tmp_path)
    for i in range(6):
        wal.append("t", 1, b"r%d" % i)
    wal.begin(1, 4)
    wal.mark_inflight(1, 4)  # crash while inserting 1..4
    wal.close()
    wal, recovery = reopen(tmp_path)
    assert [[r.seq for r in batch] for batch in recovery.inflight] == [[1, 2, 3, 4]]
    assert [r.seq for r in recovery.pending] == [5, 6]
    assert wal.token(1, 4).startswith(f"meshtrace-{wal.epoch}-")
    wal.close()


def test_torn_tail_is_cut_and_later_appends_stay_readable(tmp_path):
    wal, _ = reopen(tmp_path)
    wal.append("t", 1, b"complete")
    wal.append("t", 1, b"x" * 1000)
    wal.close()
    segment = next(p for p in tmp_path.iterdir() if p.suffix == ".wal")
    os.truncate(segment, segment.stat().st_size - 10)  # the crash hit mid-append
    wal, recovery = reopen(tmp_path)
    assert [r.payload for r in recovery.pending] == [b"complete"]
    wal.append("t", 1, b"after")
    wal.close()
    _, recovery = reopen(tmp_path)
    assert [r.payload for r in recovery.pending] == [b"complete", b"after"]


def test_corrupted_record_is_not_replayed(tmp_path):
    wal, _ = reopen(tmp_path)
    wal.append("t", 1, b"A" * 100)
    wal.close()
    segment = next(p for p in tmp_path.iterdir() if p.suffix == ".wal")
    data = bytearray(segment.read_bytes())
    data[-5] ^= 0xFF
    segment.write_bytes(bytes(data))
    _, recovery = reopen(tmp_path)
    assert recovery.pending == []


def test_committed_segments_are_deleted(tmp_path):
    wal, _ = reopen(tmp_path, segment_bytes=4096, fsync=False)
    for i in range(40):
        wal.append("t", 1, bytes([i]) * 500)
    segments = sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".wal")
    assert len(segments) > 4
    wal.begin(1, 30)
    wal.mark_committed(1, 30)
    left = sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".wal")
    assert len(left) < len(segments)
    wal.close()
    _, recovery = reopen(tmp_path)
    assert [r.seq for r in recovery.pending] == list(range(31, 41))


def test_watermark_waits_for_the_oldest_outstanding_record(tmp_path):
    wal, _ = reopen(tmp_path, fsync=False)
    for _ in range(4):
        wal.append("t", 1, b"r")
    wal.begin(1, 4)
    wal.mark_committed(3, 4)  # the right half landed first
    assert wal.committed == 0
    wal.mark_committed(1, 2)
    assert wal.committed == 4
    wal.close()


def test_ranges_committed_above_the_watermark_are_not_replayed(tmp_path):
    """Two inserters: 3..4 commits while 1..2 is still being inserted. A crash then must replay 1..2 with
    its boundaries and 5..6, never 3..4 again (it would go in under another token: duplicates)."""
    wal, _ = reopen(tmp_path, fsync=False)
    for _ in range(6):
        wal.append("t", 1, b"r")
    wal.begin(1, 2)
    wal.begin(3, 4)
    wal.mark_inflight(1, 2)
    wal.mark_inflight(3, 4)
    wal.mark_committed(3, 4)
    assert wal.committed == 0
    wal.close()
    wal, recovery = reopen(tmp_path, fsync=False)
    assert [[r.seq for r in batch] for batch in recovery.inflight] == [[1, 2]]
    assert [r.seq for r in recovery.pending] == [5, 6]
    wal.mark_committed(1, 2)
    assert wal.committed == 4  # the watermark joins the range committed before the crash
    wal.mark_committed(5, 6)
    assert wal.committed == 6
    wal.close()
    _, recovery = reopen(tmp_path, fsync=False)
    assert recovery.inflight == recovery.pending == []


def test_recovered_records_hold_the_watermark_whatever_order_they_go_in(tmp_path):
    wal, _ = reopen(tmp_path, fsync=False)
    for _ in range(4):
        wal.append("t", 1, b"r")
    wal.begin(1, 4)
    wal.mark_inflight(3, 4)  # 1..2 were refused (split off), 3..4 were being inserted: the crash
    wal.close()
    wal, recovery = reopen(tmp_path, fsync=False)
    assert [r.seq for r in recovery.pending] == [1, 2]
    wal.mark_committed(3, 4)  # replayed first
    assert wal.committed == 0  # 1..2 are not in yet: a crash now must still replay them
    wal.mark_committed(1, 2)
    assert wal.committed == 4
    wal.close()

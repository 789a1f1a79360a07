"""kill -9 in the middle of an ingest leaves a consistent store; re-running finishes with no duplicates."""

from __future__ import annotations

import gzip
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sage_health.data.embed import MiniLMEmbedder
from sage_health.data.store.sqlite import SqliteDocumentStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_ROWS = 400
BATCH = 8


def _committed(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT count(*) FROM records").fetchone()[0])
    except sqlite3.OperationalError:  # schema not created yet
        return 0
    finally:
        conn.close()


def _ingest_cmd(src: Path, store: Path) -> list[str]:
    return [sys.executable, "-m", "sage_health.interfaces.cli", "ingest", str(src), "--store", str(store),
            "--as", "data_steward", "--purpose", "operations", "--json"]  # fmt: skip


def test_kill_9_mid_ingest_then_rerun(data_dir: Path, tmp_path: Path, embedder: MiniLMEmbedder) -> None:
    src = tmp_path / "medquad_part.jsonl"
    with gzip.open(data_dir / "medquad" / "medquad.jsonl.gz", "rt", encoding="utf-8") as handle:
        src.write_text("".join(itertools.islice(handle, N_ROWS)), encoding="utf-8")
    store_dir = tmp_path / "store"
    db = store_dir / "sage.db"
    env = {**os.environ, "SAGE_BATCH_RECORDS": str(BATCH), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

    proc = subprocess.Popen(_ingest_cmd(src, store_dir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while _committed(db) < 2 * BATCH:
        assert proc.poll() is None, "ingest finished before it could be killed; enlarge N_ROWS"
        assert time.monotonic() < deadline, "no batch committed within 180 s"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    with SqliteDocumentStore(db, embedder) as store:
        partial = store.stats()["records"]
        assert 0 < partial < N_ROWS
        assert partial % BATCH == 0, "a batch was half-written"
        assert store.check() == {"ok": True, "problems": []}
        # every stored record has all its chunks and vectors
        conn = store.connection
        assert (
            conn.execute(
                "SELECT count(*) FROM records r WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.record_id = r.id)"
            ).fetchone()[0]
            == 0
        )
        assert conn.execute("SELECT status FROM ingest_runs").fetchone()[0] == "running"

    done = subprocess.run(_ingest_cmd(src, store_dir), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    with SqliteDocumentStore(db, embedder) as store:
        conn = store.connection
        assert store.stats()["records"] == N_ROWS
        assert tuple(conn.execute("SELECT count(*), count(DISTINCT id), max(version) FROM records").fetchone()) == (
            N_ROWS,
            N_ROWS,
            1,
        )
        assert store.check() == {"ok": True, "problems": []}
        statuses = [r[0] for r in conn.execute("SELECT status FROM ingest_runs ORDER BY started_at")]
        assert statuses == ["running", "completed"]

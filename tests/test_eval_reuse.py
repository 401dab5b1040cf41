"""`twostage eval` reuses what exists, and leaves a query's own document out where BEIR does.

* A BEIR folder that holds a collection built from its corpus (``index build --out`` into
  it), or a collection named with ``--collection``, is searched as it is: nothing embedded,
  no cache folder made. One that does not hold the corpus's ids, or was embedded by another
  encoder, is not used, and the reason is said.
* Run files are gzipped, and configurations that rank alike share one.
* ``--ignore-self``: collections whose queries are documents (ArguAna, Quora) drop each
  query's own document; on by default only where the same-id documents are the queries'
  own text (ADI's query and document ids overlap by accident and stay untouched).

Real data: ADI (82 documents, 35 judged queries) from ``../shared/data``, and a small set
built from it whose queries are its documents.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import SHARED
from twostage.beir import Dataset, read_trec
from twostage.cli import main
from twostage.errors import InvalidArgument
from twostage.evaluation import check_collection, evaluate

pytest.importorskip("ir_measures", reason="ir-measures (the eval extra) missing")
ADI = SHARED / "data" / "adi"
pytestmark = pytest.mark.skipif(
    not (ADI / "corpus.jsonl").is_file(), reason=f"ADI not found at {ADI}"
)


@pytest.fixture(scope="module")
def adi_built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ADI with the collection built into the BEIR folder itself, by the CLI."""
    folder = tmp_path_factory.mktemp("adi") / "adi"
    shutil.copytree(ADI, folder)
    corpus = str(folder / "corpus.jsonl")
    assert main(["index", "build", "--corpus", corpus, "--out", str(folder)]) == 0
    return folder


def test_a_data_folder_holding_its_collection_is_searched_as_is(
    adi_built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    argv = ["eval", "--data", str(adi_built), "--reranker", "none", "--first-stage", "bm25"]
    assert main([*argv, "--collections", str(cache), "--out", str(tmp_path / "o")]) == 0
    cap = capsys.readouterr()
    assert f"searching the collection in {adi_built}" in cap.err
    assert "reused, nothing re-embedded" in cap.err
    assert not cache.exists()  # nothing built
    res = json.loads((tmp_path / "o" / "results.json").read_text())["datasets"][0]
    assert res["collection"] == str(adi_built) and res["collection_reused"] is True
    assert res["encoder"] == "minilm-l6 (int8)"
    assert "None" not in cap.out + cap.err


def test_a_named_collection_is_used_and_a_wrong_one_refused_with_the_reason(
    adi_built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A BEIR folder without a collection, and the built one named with --collection.
    plain = tmp_path / "adi"
    shutil.copytree(ADI, plain)
    argv = ["eval", "--data", str(plain), "--reranker", "none", "--first-stage", "bm25"]
    cache = tmp_path / "cache"
    assert main([*argv, "--collection", str(adi_built), "--collections", str(cache)]) == 0
    assert f"searching {adi_built}" in capsys.readouterr().err
    assert not cache.exists()

    # A collection of another corpus: 40 of ADI's 82 documents.
    part = tmp_path / "part.jsonl"
    part.write_text("".join((ADI / "corpus.jsonl").read_text().splitlines(True)[:40]))
    assert main(["index", "build", "--corpus", str(part), "--out", str(tmp_path / "part")]) == 0
    capsys.readouterr()
    assert main([*argv, "--collection", str(tmp_path / "part")]) == 1
    err = capsys.readouterr().err
    assert "cannot be used for adi" in err
    assert "it holds 40 documents and corpus.jsonl has 82 ids" in err
    assert "42 of the corpus's are not in it" in err


def test_a_folder_with_another_collection_is_not_reused_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "adi"
    shutil.copytree(ADI, folder)
    part = tmp_path / "part.jsonl"
    part.write_text("".join((ADI / "corpus.jsonl").read_text().splitlines(True)[:40]))
    assert main(["index", "build", "--corpus", str(part), "--out", str(folder)]) == 0
    capsys.readouterr()
    cache = tmp_path / "cache"
    argv = ["eval", "--data", str(folder), "--reranker", "none", "--first-stage", "bm25"]
    assert main([*argv, "--collections", str(cache)]) == 0
    cap = capsys.readouterr()
    assert f"not reusing the collection in {folder}: it holds 40 documents" in cap.err
    assert f"building a collection in {cache}" in cap.err
    assert "adi (test, 35 queries, 82 documents)" in cap.out
    assert len(list(cache.iterdir())) == 1


def test_another_encoder_is_a_reason_not_to_reuse(adi_built: Path) -> None:
    ds = Dataset.load(adi_built)
    other = SimpleNamespace(fingerprint="0" * 16, name="my-encoder", precision="fp32")
    col, why = check_collection(adi_built, ds, other)
    assert col is None
    assert why == (
        "it was embedded by minilm-l6 (int8), and this evaluation asks for my-encoder (fp32)"
    )
    col, why = check_collection(adi_built, ds)
    assert col is not None and why == ""
    col.close()


# ---- queries that are documents ----------------------------------------------------------------


@pytest.fixture(scope="module")
def self_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 ADI documents; the first 10 are also the queries (same id, same text), each
    judged to be answered by the next document (a different one)."""
    root = tmp_path_factory.mktemp("selfset") / "selfset"
    (root / "qrels").mkdir(parents=True)
    docs = [json.loads(x) for x in (ADI / "corpus.jsonl").read_text().splitlines()[:30]]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": d["_id"], "text": d["text"]}) + "\n" for d in docs[:10])
    )
    rows = ["query-id\tcorpus-id\tscore"]
    rows += [f"{docs[i]['_id']}\t{docs[i + 1]['_id']}\t1" for i in range(10)]
    (root / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n")
    return root


def test_ignore_self_is_automatic_where_queries_are_documents(
    self_set: Path, tmp_path: Path
) -> None:
    notes: list[str] = []
    kw = dict(rerankers=[], first_stages=["bm25"], collections=tmp_path / "c", notes=notes.append)
    auto = evaluate([self_set], **kw).datasets[0]  # type: ignore[arg-type]
    assert auto.ignore_self and auto.self_matches == 10
    assert any("10 of 10 queries are documents of the corpus" in n for n in notes)
    kept = evaluate([self_set], ignore_self=False, **kw).datasets[0]  # type: ignore[arg-type]
    assert not kept.ignore_self
    # Kept, each query finds itself first (BM25 on its own text), which is not judged:
    # ignoring it lifts NDCG@10.
    assert kept.table()["bm25"]["nDCG@10"] < auto.table()["bm25"]["nDCG@10"]


def test_ignored_self_is_absent_from_the_run_files_and_alike_runs_share_a_file(
    self_set: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    ev = evaluate(
        [self_set],
        rerankers=["twostage-rerank"],
        first_stages=["bm25"],
        depths=[40, 50],  # both rerank every candidate of a 30-document corpus
        latency_queries=0,
        ignore_self=True,
        collections=tmp_path / "c",
        out=out,
    )
    (ds,) = ev.datasets
    files = {c.name: c.run_file for c in ds.configs}
    assert files["bm25+twostage-rerank@40"] == files["bm25+twostage-rerank@50"]
    assert files["bm25"] != files["bm25+twostage-rerank@40"]
    assert sorted(p.name for p in (out / "runs" / "selfset").iterdir()) == [
        "bm25+twostage-rerank_at40.trec.gz",
        "bm25.trec.gz",
    ]
    for f in set(files.values()):
        raw = (out / f).read_bytes()
        assert raw[:2] == b"\x1f\x8b"  # gzip
        run = read_trec(out / f)
        assert len(run) == 10 and all(q not in docs for q, docs in run.items())
        assert gzip.decompress(raw).decode().count("\n") == sum(len(d) for d in run.values())
    report = (out / "report.md").read_text()
    assert "Each query's own document (same id) is left out" in report
    assert "Run files: 2 for 3 configurations" in report
    assert "None" not in report and "None" not in (out / "results.json").read_text()


def test_ids_that_merely_overlap_leave_self_matches_alone(tmp_path: Path) -> None:
    """ADI's queries 1-35 and documents 1-82 share ids by accident, not texts."""
    notes: list[str] = []
    ev = evaluate(
        [ADI],
        rerankers=[],
        first_stages=["bm25"],
        collections=tmp_path / "c",
        notes=notes.append,
    )
    ds = ev.datasets[0]
    assert not ds.ignore_self and ds.self_matches == 35
    assert any("35 query ids are also document ids, but only 0" in n for n in notes)


def test_cli_ignore_self_flags(self_set: Path, tmp_path: Path) -> None:
    base = [sys.executable, "-m", "twostage", "eval", "--data", str(self_set)]
    base += ["--reranker", "none", "--first-stage", "bm25", "--collections", str(tmp_path / "c")]
    both = subprocess.run(
        [*base, "--ignore-self", "--keep-self"], capture_output=True, text=True, timeout=300
    )
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    kept = subprocess.run(
        [*base, "--keep-self", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert kept.returncode == 0, kept.stderr
    run = read_trec(tmp_path / "o" / "runs" / "selfset" / "bm25.trec.gz")
    assert all(docs[0] == q for q, docs in run.items())  # each query finds itself first


def test_more_collections_than_datasets_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="one per --data at most"):
        evaluate([ADI], collection=["a", "b"], rerankers=[])

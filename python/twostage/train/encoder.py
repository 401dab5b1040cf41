"""Bi-encoder fine-tuning: multiple-negatives ranking loss with in-batch and mined negatives.

Each step takes ``batch`` (query, positive) rows from the mined JSONL (:mod:`twostage.train.mine`)
and ``negatives`` of each row's mined hard negatives, embeds queries and documents with the
same BERT (masked mean pooling, L2-normalised: the served :class:`~twostage.encoder.Encoder`'s
recipe), and minimises the InfoNCE / multiple-negatives ranking loss (Henderson et al. 2017;
sentence-transformers' ``MultipleNegativesRankingLoss``): for query ``i``,
``-log softmax(scale * cos(q_i, D))[i]`` over ``D`` = every positive of the batch (the other
rows' positives are the in-batch negatives) and every mined negative.

* A batch draws from one source at a time (SciFact, QED, ...): in-batch negatives from the
  same domain are harder, and documents of similar length pad less. A query appears at most
  once per batch, and a document equal to a row's positive is masked out of that row's
  negatives, so no positive is ever trained as a negative.
* Deterministic for a seed: the batches depend on ``(seed, epoch)``, the negatives drawn on
  ``(seed, step)``; dropout uses torch's generator, whose state is in every checkpoint, so a
  resumed run ends with the same weights as one that was not stopped.
* The result is exported through the project's own exporter (:func:`export_encoder_folder`:
  the graph and quantiser of the built-in ``minilm-l6``) to a folder ``Encoder.load`` reads.

A new encoder changes every stored vector: unlike a reranker swap, it means re-embedding the
corpus into a new collection (``twostage index reembed OLD --encoder FOLDER --out NEW``).

Training needs PyTorch (``pip install 'twostage-search[train]'``); :func:`evaluate_encoder`
does not.

>>> cfg = EncoderTrainConfig(data=[Path("mined/scifact.jsonl")], out=Path("enc"))  # doctest: +SKIP
>>> train_encoder(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from twostage._models import Precision
from twostage.train.loop import Checkpoints, device, linear_warmup
from twostage.train.mine import iter_jsonl

if TYPE_CHECKING:
    import torch

    from twostage.train.model import BiEncoder

REEMBED_NOTE = (
    "A new encoder means re-embedding the corpus (unlike a reranker swap): every stored "
    "vector changes. Build a new collection generation with it, from the old collection\n"
    "  twostage index reembed OLD_COLLECTION --encoder {folder} --out NEW_COLLECTION\n"
    "or from the corpus file\n"
    "  twostage index build --corpus CORPUS --encoder {folder} --out NEW_COLLECTION\n"
    "and serve that folder in place of the old one (a new folder: an existing collection "
    "keeps the encoder named in its manifest)."
)


@dataclass
class EncoderTrainConfig:
    """Everything a run depends on; saved with every checkpoint."""

    data: list[Path]
    out: Path
    init: Path | None = None  # default: the all-MiniLM-L6-v2 checkpoint (default_init)
    layers: list[int] | None = None  # keep these layers; default all
    steps: int = 1000
    batch: int = 32  # (query, positive) rows per step: batch - 1 in-batch negatives each
    negatives: int = 1  # mined hard negatives per row
    neg_pool: int = 10  # drawn from this many hardest
    max_length: int = 256  # documents: the served encoder's length
    query_max_length: int = 64
    scale: float = 20.0  # 1 / temperature (sentence-transformers' default)
    lr: float = 2e-5
    warmup: float = 0.1
    weight_decay: float = 0.01
    dropout: float = 0.1
    freeze_embeddings: bool = True  # 11.7M of MiniLM's 22.7M weights, the most to forget
    seed: int = 0
    bf16: bool = False
    threads: int = 2
    save_every: int = 50
    log_every: int = 10
    max_minutes: float | None = None
    stop_at: int | None = None  # stop at this step; the schedule still follows ``steps``
    repeat: dict[str, int] = field(default_factory=dict)  # source -> times its rows appear
    device: str = "auto"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["data"] = [str(p) for p in self.data]
        d["out"] = str(self.out)
        d["init"] = str(self.init) if self.init else None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EncoderTrainConfig:
        d = dict(d)
        d["data"] = [Path(p) for p in d["data"]]
        d["out"] = Path(d["out"])
        d["init"] = Path(d["init"]) if d.get("init") else None
        return cls(**d)


# ---- data: rows, batches, negatives (no PyTorch) ----------------------------------------------


def load_rows(paths: Sequence[Path], repeat: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Mined rows (with or without negatives), ``repeat[source]`` copies of a source's rows."""
    out: list[dict[str, Any]] = []
    for r in iter_jsonl(paths):
        out.extend([r] * (repeat or {}).get(r["source"], 1))
    return out


def epoch_batches(
    rows: Sequence[dict[str, Any]], batch: int, seed: int, epoch: int
) -> list[list[int]]:
    """One epoch's batches: every row once, one source per batch, no query twice in a batch
    (its positive would be an in-batch negative of its other row), in a seeded order."""
    rng = np.random.default_rng([seed, epoch])
    by_source: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_source.setdefault(r["source"], []).append(i)
    batches: list[list[int]] = []
    for source in sorted(by_source):
        pending = [int(i) for i in rng.permutation(by_source[source])]
        while pending:
            cur: list[int] = []
            seen: set[str] = set()
            rest: list[int] = []
            for i in pending:
                key = rows[i]["qid"]
                if len(cur) < batch and key not in seen:
                    cur.append(i)
                    seen.add(key)
                else:
                    rest.append(i)
            batches.append(cur)
            pending = rest
    return [batches[j] for j in rng.permutation(len(batches))]


class Schedule:
    """Step -> batch over successive epochs (their lengths vary a little with the order)."""

    def __init__(self, rows: Sequence[dict[str, Any]], batch: int, seed: int) -> None:
        self.rows, self.batch, self.seed = rows, batch, seed
        self._epochs: list[list[list[int]]] = []
        self._starts: list[int] = []

    def __call__(self, step: int) -> list[int]:
        while not self._starts or step >= self._starts[-1] + len(self._epochs[-1]):
            start = self._starts[-1] + len(self._epochs[-1]) if self._starts else 0
            self._epochs.append(epoch_batches(self.rows, self.batch, self.seed, len(self._epochs)))
            self._starts.append(start)
        e = max(i for i, s in enumerate(self._starts) if s <= step)
        return self._epochs[e][step - self._starts[e]]

    def epoch_length(self, epoch: int) -> int:
        """Batches in ``epoch``."""
        while len(self._epochs) <= epoch:
            self(self._starts[-1] + len(self._epochs[-1]) if self._starts else 0)
        return len(self._epochs[epoch])

    def epoch_of(self, step: int) -> int:
        self(step)
        return max(i for i, s in enumerate(self._starts) if s <= step)


def step_texts(
    rows: Sequence[dict[str, Any]], idx: Sequence[int], step: int, cfg: EncoderTrainConfig
) -> tuple[list[str], list[str], np.ndarray]:
    """Queries, documents (the positives in row order, then each row's drawn negatives) and
    the mask of (query, document) cells that must not count as negatives: a document whose
    text is that query's positive, other than its own column."""
    rng = np.random.default_rng([cfg.seed, 7_919, step])
    queries = [rows[i]["query"] for i in idx]
    positives = [rows[i]["positive"] for i in idx]
    negs: list[str] = []
    for i in idx:
        pool = rows[i]["negatives"][: cfg.neg_pool]
        if pool and cfg.negatives:
            take = rng.choice(len(pool), size=cfg.negatives, replace=len(pool) < cfg.negatives)
            negs.extend(pool[j] for j in take)
    docs = positives + negs
    mask = np.zeros((len(queries), len(docs)), dtype=bool)
    for a, pos in enumerate(positives):
        for b, d in enumerate(docs):
            if b != a and d == pos:
                mask[a, b] = True
    return queries, docs, mask


# ---- the model and the loss (PyTorch) ----------------------------------------------------------


class Tokens:
    """Token ids as :class:`~twostage.encoder.Encoder` makes them: ``[CLS] text [SEP]``,
    truncated, no padding (batches pad to their longest row). Cached per text."""

    def __init__(self, tokenizer: Path, max_length: int) -> None:
        from twostage._models import load_tokenizer

        self.tok = load_tokenizer(Path(tokenizer), max_length)
        self.max_length = max_length
        self._cache: dict[str, list[int]] = {}

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            # Only the first max_length tokens matter: cap very long texts before tokenising.
            for t, e in zip(
                todo, self.tok.encode_batch([t[: self.max_length * 12] for t in todo]), strict=True
            ):
                self._cache[t] = e.ids
        return [self._cache[t] for t in texts]


def embed(
    model: BiEncoder, tokens: Tokens, texts: Sequence[str], *, chunk: int = 16, bf16: bool = False
) -> torch.Tensor:
    """Unit vectors [len(texts), hidden] in input order, with gradients where the model has
    them. Texts are sorted by length and run in chunks of ``chunk``, each padded to its own
    longest, so short texts do not pay for long ones."""
    import torch

    ids = tokens.ids(texts)
    dev = next(model.parameters()).device
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    parts, rows = [], []
    for s in range(0, len(order), chunk):
        sel = order[s : s + chunk]
        seq = max(len(ids[i]) for i in sel)
        t = torch.zeros((len(sel), seq), dtype=torch.long)
        m = torch.zeros_like(t)
        for r, i in enumerate(sel):
            t[r, : len(ids[i])] = torch.tensor(ids[i])
            m[r, : len(ids[i])] = 1
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            parts.append(model(t.to(dev), m.to(dev)))
        rows.extend(sel)
    out = torch.cat(parts)
    inv = torch.empty(len(rows), dtype=torch.long)
    inv[torch.tensor(rows)] = torch.arange(len(rows))
    return out[inv.to(out.device)]


def mnrl_loss(
    q: torch.Tensor, d: torch.Tensor, scale: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Multiple-negatives ranking loss: query ``i``'s positive is document ``i``; every other
    document (in-batch positives, mined negatives) is a negative unless ``mask`` says not."""
    import torch
    from torch.nn import functional as F

    s = scale * (q.float() @ d.float().T)
    if mask is not None:
        s = s.masked_fill(mask, float("-inf"))
    return F.cross_entropy(s, torch.arange(q.shape[0], device=s.device))


class EncoderTrainer(Checkpoints):
    """One run: model, optimiser, schedule, data; :meth:`run` trains, saving as it goes."""

    def __init__(self, cfg: EncoderTrainConfig) -> None:
        import torch

        from twostage.train.model import load_bi_encoder
        from twostage.train.reranker import default_init

        self.cfg = cfg
        torch.set_num_threads(cfg.threads)
        self.device = device(cfg.device)
        init = cfg.init or default_init()
        self.tokenizer = init / "tokenizer.json"
        torch.manual_seed(cfg.seed)
        self.model = load_bi_encoder(init, cfg.layers, dropout=cfg.dropout).to(self.device)
        if cfg.freeze_embeddings:
            self.model.bert.word.weight.requires_grad_(False)
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        decay = [p for n, p in params if p.ndim >= 2]
        no_decay = [p for n, p in params if p.ndim < 2]
        self.opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, linear_warmup(cfg.steps, cfg.warmup)
        )
        self.queries = Tokens(self.tokenizer, cfg.query_max_length)
        self.docs = Tokens(self.tokenizer, cfg.max_length)
        self.rows = load_rows(cfg.data, cfg.repeat)
        if not self.rows:
            raise ValueError(f"no training rows in {cfg.data}")
        self.schedule = Schedule(self.rows, cfg.batch, cfg.seed)
        self.step = 0
        torch.manual_seed(cfg.seed)

    # ---- training ----
    def train_step(self) -> tuple[float, int]:
        """One optimiser step; returns (loss, rows in the batch)."""
        import torch

        self.model.train()
        cfg = self.cfg
        idx = self.schedule(self.step)
        queries, docs, mask = step_texts(self.rows, idx, self.step, cfg)
        q = embed(self.model, self.queries, queries, bf16=cfg.bf16)
        d = embed(self.model, self.docs, docs, bf16=cfg.bf16)
        loss = mnrl_loss(q, d, cfg.scale, torch.from_numpy(mask).to(q.device))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        self.step += 1
        return float(loss.detach()), len(idx)

    def run(
        self, log: Any = None, until: int | None = None, progress: bool = True
    ) -> dict[str, Any]:
        """Train to ``cfg.steps`` (or ``until``, or ``max_minutes``): a tqdm bar with the loss
        and pairs/s, and a line per ``log_every`` steps in ``out/train_log.jsonl``."""
        from tqdm import tqdm

        cfg = self.cfg
        cfg.out.mkdir(parents=True, exist_ok=True)
        (cfg.out / "train_config.json").write_text(json.dumps(cfg.to_json(), indent=2))
        logf = (cfg.out / "train_log.jsonl").open("a", encoding="utf-8")
        until = until if until is not None else cfg.stop_at
        end = cfg.steps if until is None else min(until, cfg.steps)
        t0 = time.perf_counter()
        pairs = 0
        ema: float | None = None
        first: float | None = None
        stopped = "steps"
        bar = tqdm(total=end, initial=self.step, unit="step", disable=not progress, file=sys.stderr)
        try:
            while self.step < end:
                loss, n = self.train_step()
                pairs += n
                first = loss if first is None else first
                ema = loss if ema is None else 0.95 * ema + 0.05 * loss
                elapsed = time.perf_counter() - t0
                rate = pairs / max(elapsed, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", ema=f"{ema:.3f}", pairs_s=f"{rate:.1f}")
                if self.step % cfg.log_every == 0 or self.step == end:
                    rec = {
                        "step": self.step,
                        "loss": loss,
                        "ema": ema,
                        "lr": self.sched.get_last_lr()[0],
                        "pairs_s": rate,
                        "epoch": self.schedule.epoch_of(self.step - 1),
                        "s": elapsed,
                    }
                    logf.write(json.dumps(rec) + "\n")
                    logf.flush()
                    if log is not None:
                        log(json.dumps(rec))
                if self.step % cfg.save_every == 0:
                    self.save()
                if cfg.max_minutes is not None and elapsed > cfg.max_minutes * 60:
                    stopped = "time"
                    break
        finally:
            bar.close()
            logf.close()
        self.save()
        return {
            "steps": self.step,
            "stopped": stopped,
            "minutes": round((time.perf_counter() - t0) / 60, 2),
            "pairs": pairs,
            "rows": len(self.rows),
            "epochs": round(self.step / self.schedule.epoch_length(0), 2),
            "first_loss": first,
            "final_loss_ema": ema,
        }

    def settings(self) -> dict[str, Any]:
        """The served encoder's twostage.json: what the model was trained to be read with."""
        return {
            "kind": "encoder",
            "pooling": "mean",
            "normalize": True,
            "max_length": self.cfg.max_length,
            "query_prefix": "",
            "document_prefix": "",
        }

    def save_model(self, folder: Path) -> Path:
        """The trained weights as a Hugging Face ``BertModel`` folder (+ twostage.json)."""
        from twostage.train.model import save_encoder_checkpoint

        return save_encoder_checkpoint(self.model, folder, self.tokenizer, self.settings())


def encode_texts(model: BiEncoder, tokens: Tokens, texts: Sequence[str]) -> np.ndarray:
    """PyTorch embeddings (eval mode, float32): the reference an export is checked against."""
    import torch

    model.eval()
    with torch.no_grad():
        return embed(model, tokens, texts).cpu().numpy()


def train_encoder(
    cfg: EncoderTrainConfig, *, resume: bool = True, export: bool = True, progress: bool = True
) -> dict[str, Any]:
    """Train (resuming from ``cfg.out`` if it holds a checkpoint), save ``cfg.out/model`` (the
    checkpoint) and export ``cfg.out/encoder`` (ONNX, int8 + fp32)."""
    from twostage.train.export import export_encoder_folder

    tr = EncoderTrainer(cfg)
    if resume and tr.resume():
        print(f"resumed at step {tr.step}", file=sys.stderr, flush=True)
    info = tr.run(progress=progress)
    ck = tr.save_model(cfg.out / "model")
    info["checkpoint"] = str(ck)
    if export:
        info["encoder"] = str(export_encoder_folder(ck, cfg.out / "encoder"))
    (cfg.out / "train_result.json").write_text(json.dumps(info, indent=2))
    return info


# ---- evaluation (no PyTorch) -------------------------------------------------------------------


def per_query_metrics(
    qrels: dict[str, dict[str, int]], cands: dict[str, list[tuple[str, float]]]
) -> dict[str, dict[str, float]]:
    """``{"ndcg@10" | "recall@100": {qid: value}}`` over every qrels query (a query missing
    from the run scores 0): :func:`twostage.metrics.per_query`, the project's one NDCG."""
    from twostage.metrics import per_query

    run = {q: {d: float(s) for d, s in lst} for q, lst in cands.items() if q in qrels}
    per = per_query(qrels, run, ("nDCG@10", "R@100"))
    return {"ndcg@10": per["nDCG@10"], "recall@100": per["R@100"]}


def retrieval_metrics(
    qrels: dict[str, dict[str, int]], cands: dict[str, list[tuple[str, float]]]
) -> dict[str, float]:
    """NDCG@10 and Recall@100 of a first-stage run, the mean over every qrels query."""
    per = per_query_metrics(qrels, cands)
    n = max(len(qrels), 1)
    return {name: round(sum(v.values()) / n, 4) for name, v in per.items()}


def evaluate_encoder(
    spec: str | os.PathLike[str],
    folder: Path,
    *,
    split: str = "test",
    query_ids: Sequence[str] | None = None,
    precision: Precision = "int8",
    cache: Path | None = None,
    threads: int | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """NDCG@10 and Recall@100 of an encoder on a BEIR split: exact search over the whole
    corpus (:func:`twostage.train.evaluate.first_stage`), ``query_ids`` to restrict it (dev).

    ``keep`` adds ``_per_query`` (:func:`per_query_metrics`), for paired tests.
    """
    from twostage.encoder import Encoder
    from twostage.train.data import load_beir_eval
    from twostage.train.evaluate import first_stage

    enc = Encoder.load(spec, precision=precision, threads=threads)
    queries, corpus, qrels = load_beir_eval(Path(folder), split)
    if query_ids is not None:
        wanted = set(query_ids)
        queries = {q: t for q, t in queries.items() if q in wanted}
        qrels = {q: r for q, r in qrels.items() if q in wanted}
    t0 = time.perf_counter()
    cands = first_stage(queries, corpus, 100, encoder=enc, cache=cache)
    per = per_query_metrics(qrels, cands)
    out = {
        "encoder": str(spec),
        "fingerprint": enc.fingerprint,
        "precision": precision,
        "collection": Path(folder).name,
        "split": split,
        "queries": len(qrels),
        "documents": len(corpus),
        **{name: round(sum(v.values()) / max(len(qrels), 1), 4) for name, v in per.items()},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if keep:
        out["_per_query"] = per
    return out


__all__ = [
    "REEMBED_NOTE",
    "EncoderTrainConfig",
    "EncoderTrainer",
    "Schedule",
    "Tokens",
    "embed",
    "encode_texts",
    "epoch_batches",
    "evaluate_encoder",
    "load_rows",
    "mnrl_loss",
    "per_query_metrics",
    "retrieval_metrics",
    "step_texts",
    "train_encoder",
]

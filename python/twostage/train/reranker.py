"""Cross-encoder training: listwise softmax cross-entropy over 1 positive + n mined negatives.

Each step takes ``batch`` groups from the mined JSONL rows (:mod:`twostage.train.mine`),
samples ``negatives`` of each group's hard negatives, scores the ``batch * (1 + negatives)``
pairs and minimises ``-log softmax(scores)[positive]`` per group. Pairs are packed exactly as
:class:`twostage.reranker.Reranker` packs them at serving time (:class:`Packer`).

Deterministic for a seed: the data order and the negatives drawn depend only on
``(seed, step)``; dropout uses torch's generator, whose state is in every checkpoint. A run
stopped and resumed from its last checkpoint ends with the same weights as one that was not.

>>> cfg = TrainConfig(data=[Path("mined/scifact.jsonl")], out=Path("runs/ce"))  # doctest: +SKIP
>>> train(cfg)  # doctest: +SKIP

Needs PyTorch (``pip install 'twostage-search[train]'``).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.nn import functional as F

from twostage.train.loop import Checkpoints, device, linear_warmup
from twostage.train.mine import iter_jsonl
from twostage.train.model import BertCrossEncoder, load_pretrained, save_checkpoint


def default_init() -> Path:
    """The all-MiniLM-L6-v2 checkpoint (:func:`twostage._models.minilm_checkpoint`)."""
    from twostage._models import minilm_checkpoint

    return minilm_checkpoint()


class Packer:
    """``[CLS] q [SEP] d [SEP]`` within ``max_length``: the same rule as ``Reranker.pack``.

    The document gives way first; the query keeps at most half of the budget unless the
    document leaves it more room. Token ids are cached per text.
    """

    def __init__(self, tokenizer: Path, max_length: int) -> None:
        self.tok = Tokenizer.from_file(str(tokenizer))
        self.tok.no_padding()
        self.tok.no_truncation()
        self.max_length = max_length
        cls_id, sep_id = self.tok.token_to_id("[CLS]"), self.tok.token_to_id("[SEP]")
        if cls_id is None or sep_id is None:
            raise ValueError(f"{tokenizer}: no [CLS]/[SEP] tokens")
        self.cls, self.sep = cls_id, sep_id
        self._cache: dict[str, list[int]] = {}

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            # Cap very long texts before tokenising: only the first max_length tokens matter.
            enc = self.tok.encode_batch(
                [t[: self.max_length * 12] for t in todo], add_special_tokens=False
            )
            for t, e in zip(todo, enc, strict=True):
                self._cache[t] = e.ids[: self.max_length]
        return [self._cache[t] for t in texts]

    def pack(self, q: Sequence[int], d: Sequence[int]) -> tuple[list[int], list[int]]:
        budget = self.max_length - 3
        q_keep = min(len(q), max(budget // 2, budget - len(d)))
        d_keep = min(len(d), budget - q_keep)
        head = [self.cls, *q[:q_keep], self.sep]
        tail = [*d[:d_keep], self.sep]
        return head + tail, [0] * len(head) + [1] * len(tail)

    def batch(self, pairs: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
        """Padded tensors for (query, document) pairs, padded to the longest pair."""
        qs = self.ids([q for q, _ in pairs])
        ds = self.ids([d for _, d in pairs])
        packed = [self.pack(q, d) for q, d in zip(qs, ds, strict=True)]
        seq = max(len(i) for i, _ in packed)
        ids = torch.zeros((len(packed), seq), dtype=torch.long)
        types = torch.zeros_like(ids)
        mask = torch.zeros_like(ids)
        for r, (i, t) in enumerate(packed):
            ids[r, : len(i)] = torch.tensor(i)
            types[r, : len(t)] = torch.tensor(t)
            mask[r, : len(i)] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


@dataclass
class TrainConfig:
    """Everything a run depends on; saved with every checkpoint."""

    data: list[Path]
    out: Path
    init: Path | None = None  # default: the all-MiniLM-L6-v2 checkpoint (default_init)
    layers: list[int] | None = None  # e.g. [0, 1, 2]; default all
    steps: int = 1000
    batch: int = 4  # groups per step
    negatives: int = 7  # per group
    neg_pool: int = 20  # sample negatives from this many hardest
    # "hard": the mined list; "random": any passage of the row's own source other than its
    # positive (the ablation of mining itself; a row's mined negatives are not preferred).
    negatives_from: str = "hard"
    max_length: int = 192
    lr: float = 7e-5
    # "listwise" (softmax over the group), "pointwise" (binary cross-entropy per pair, the
    # loss of sentence-transformers' CrossEncoder.fit), or "margin_mse" (rows with teacher
    # scores: distillation)
    loss: str = "listwise"
    # "mean" pools the last layer like the bi-encoder it starts from, so the head sees
    # features that differ from pair to pair at step 0; MiniLM's [CLS] does not (it was
    # trained with mean pooling): a "cls" run sat at log(1 + negatives) for 40+ steps.
    pooling: str = "mean"
    head_lr_mult: float = 10.0  # pooler + classifier learn this many times faster
    warmup: float = 0.06
    weight_decay: float = 0.01
    dropout: float = 0.1
    freeze_embeddings: bool = True  # the 11.7M word-embedding rows: most params, little gain
    seed: int = 0
    bf16: bool = False
    threads: int = 2
    save_every: int = 200
    log_every: int = 20
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
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["data"] = [Path(p) for p in d["data"]]
        d["out"] = Path(d["out"])
        d["init"] = Path(d["init"]) if d.get("init") else None
        return cls(**d)


def load_groups(
    paths: Sequence[Path], repeat: dict[str, int] | None = None
) -> list[dict[str, Any]]:
    """Mined rows with at least one negative; ``repeat[source]`` copies of a source's rows."""
    rows = [r for r in iter_jsonl(paths) if r["negatives"]]
    out: list[dict[str, Any]] = []
    for r in rows:
        out.extend([r] * (repeat or {}).get(r["source"], 1))
    return out


def group_indices(n_rows: int, step: int, batch: int, seed: int) -> list[int]:
    """Rows for a step: successive slices of one seeded permutation per epoch."""
    out = []
    for j in range(batch):
        k = step * batch + j
        epoch, pos = divmod(k, n_rows)
        perm = np.random.default_rng([seed, epoch]).permutation(n_rows)
        out.append(int(perm[pos]))
    return out


@dataclass
class RandomPool:
    """What random negatives are drawn from: every distinct passage the rows of each source
    name (positive or negative, first-seen order), and each query's judged positives, which
    are never drawn as its negatives."""

    passages: dict[str, list[str]]
    positives: dict[tuple[str, str], set[str]]

    @classmethod
    def of(cls, rows: Sequence[dict[str, Any]]) -> RandomPool:
        seen: dict[str, dict[str, None]] = {}
        positives: dict[tuple[str, str], set[str]] = {}
        for r in rows:
            d = seen.setdefault(r["source"], {})
            d[r["positive"]] = None
            for n in r["negatives"]:
                d[n] = None
            positives.setdefault(_query_key(r), set()).add(r["positive"])
        return cls({k: list(v) for k, v in seen.items()}, positives)

    def draw(self, row: dict[str, Any], k: int, rng: np.random.Generator) -> list[str]:
        """``k`` passages of the row's source drawn uniformly, never one of its query's
        positives."""
        passages = self.passages[row["source"]]
        avoid = self.positives[_query_key(row)]
        if len(passages) <= len(avoid):
            raise ValueError(f"source {row['source']!r} has too few passages for random negatives")
        out: list[str] = []
        while len(out) < k:
            p = passages[int(rng.integers(len(passages)))]
            if p not in avoid:
                out.append(p)
        return out


def _query_key(row: dict[str, Any]) -> tuple[str, str]:
    # Rows of one query (one per judged positive) share its qid; rows without one, its text.
    return row["source"], str(row.get("qid", row["query"]))


def step_batch(
    rows: list[dict[str, Any]],
    step: int,
    cfg: TrainConfig,
    pool: RandomPool | None = None,
) -> tuple[list[tuple[str, str]], np.ndarray | None]:
    """The (query, document) pairs of a step, group by group, positive first, and the
    teacher's scores for them ([groups, 1 + negatives]) where the rows carry ``teacher``
    (one score for the positive, then one per negative, as :mod:`twostage.train.distill`
    writes them). With ``cfg.negatives_from == "random"`` the negatives are drawn from
    ``pool`` instead of the mined list."""
    rng = np.random.default_rng([cfg.seed, 1_000_003, step])
    pairs: list[tuple[str, str]] = []
    teacher: list[list[float]] = []
    if cfg.negatives_from not in ("hard", "random"):
        raise ValueError(f"negatives_from must be 'hard' or 'random', not {cfg.negatives_from!r}")
    for i in group_indices(len(rows), step, cfg.batch, cfg.seed):
        r = rows[i]
        pairs.append((r["query"], r["positive"]))
        if cfg.negatives_from == "random":
            if "teacher" in r:
                raise ValueError("random negatives have no teacher scores: use 'hard'")
            if pool is None:
                raise ValueError("random negatives need a RandomPool of the rows")
            pairs.extend((r["query"], p) for p in pool.draw(r, cfg.negatives, rng))
            continue
        hard = r["negatives"][: cfg.neg_pool]
        if "teacher" in r:
            hard = hard[: len(r["teacher"]) - 1]
        take = rng.choice(len(hard), size=cfg.negatives, replace=len(hard) < cfg.negatives)
        pairs.extend((r["query"], hard[j]) for j in take)
        if "teacher" in r:
            teacher.append([r["teacher"][0], *(r["teacher"][1 + j] for j in take)])
    if teacher and len(teacher) != cfg.batch:
        raise ValueError("some rows carry teacher scores and some do not")
    return pairs, (np.asarray(teacher, dtype=np.float32) if teacher else None)


def step_pairs(rows: list[dict[str, Any]], step: int, cfg: TrainConfig) -> list[tuple[str, str]]:
    """The (query, document) pairs of a step, group by group, positive first."""
    return step_batch(rows, step, cfg)[0]


def margin_mse_loss(logits: torch.Tensor, teacher: torch.Tensor, group: int) -> torch.Tensor:
    """Margin-MSE (Hofstätter et al. 2020): the student's positive-minus-negative margins
    regress on the teacher's, so only score differences have to match, not their scale."""
    s = logits.float().view(-1, group)
    t = teacher.float().view(-1, group)
    return F.mse_loss(s[:, :1] - s[:, 1:], t[:, :1] - t[:, 1:])


def pointwise_loss(logits: torch.Tensor, group: int) -> torch.Tensor:
    """Binary cross-entropy per pair: 1 for each group's first (the positive), 0 for the rest.
    Each pair is judged alone, so scores are calibrated across queries but not ranked within
    one: the ablation against :func:`listwise_loss`."""
    s = logits.float().view(-1, group)
    labels = torch.zeros_like(s)
    labels[:, 0] = 1.0
    return F.binary_cross_entropy_with_logits(s, labels)


def listwise_loss(logits: torch.Tensor, group: int) -> torch.Tensor:
    """Mean over groups of ``-log softmax(scores)[0]``: the positive is each group's first."""
    s = logits.float().view(-1, group)
    return F.cross_entropy(s, torch.zeros(s.shape[0], dtype=torch.long, device=s.device))


class Trainer(Checkpoints):
    """One run: model, optimiser, schedule, data; :meth:`run` trains, saving as it goes."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        torch.set_num_threads(cfg.threads)
        self.device = device(cfg.device)
        init = cfg.init or default_init()
        self.tokenizer = init / "tokenizer.json"
        self.model: BertCrossEncoder = load_pretrained(
            init, cfg.layers, seed=cfg.seed, dropout=cfg.dropout, pooling=cfg.pooling
        ).to(self.device)
        if cfg.freeze_embeddings:
            self.model.word.weight.requires_grad_(False)
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

        def group(head: bool, decay: bool) -> dict[str, Any]:
            ps = [
                p
                for n, p in params
                if n.startswith(("pooler.", "classifier.")) == head and (p.ndim >= 2) == decay
            ]
            return {
                "params": ps,
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "lr": cfg.lr * (cfg.head_lr_mult if head else 1.0),
            }

        # The head starts from scratch (a bi-encoder has no classifier): a larger step
        # gets it off the ground in the few hundred steps a CPU run affords.
        self.opt = torch.optim.AdamW(
            [group(h, d) for h in (False, True) for d in (True, False)], lr=cfg.lr
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, linear_warmup(cfg.steps, cfg.warmup)
        )
        self.packer = Packer(self.tokenizer, cfg.max_length)
        self.rows = load_groups(cfg.data, cfg.repeat)
        if not self.rows:
            raise ValueError(f"no training rows with negatives in {cfg.data}")
        self.random_pool = RandomPool.of(self.rows) if cfg.negatives_from == "random" else None
        self.step = 0
        torch.manual_seed(cfg.seed)

    # ---- training ----
    def train_step(self) -> float:
        self.model.train()
        cfg = self.cfg
        pairs, teacher = step_batch(self.rows, self.step, cfg, self.random_pool)
        feats = {k: v.to(self.device) for k, v in self.packer.batch(pairs).items()}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = self.model(**feats)
        if cfg.loss == "margin_mse":
            if teacher is None:
                raise ValueError("loss 'margin_mse' needs rows with teacher scores (distill)")
            t = torch.from_numpy(teacher).to(self.device)
            loss = margin_mse_loss(logits, t, 1 + cfg.negatives)
        elif cfg.loss == "pointwise":
            loss = pointwise_loss(logits, 1 + cfg.negatives)
        elif cfg.loss == "listwise":
            loss = listwise_loss(logits, 1 + cfg.negatives)
        else:
            raise ValueError(f"unknown loss {cfg.loss!r}: listwise, pointwise or margin_mse")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        self.step += 1
        return float(loss.detach())

    def run(self, log: Any = None, until: int | None = None) -> dict[str, Any]:
        """Train to ``cfg.steps`` (or ``until``, or ``max_minutes``), logging loss and pairs/s.

        ``until`` stops early without changing the schedule (which follows ``cfg.steps``).
        """
        cfg = self.cfg
        cfg.out.mkdir(parents=True, exist_ok=True)
        (cfg.out / "train_config.json").write_text(json.dumps(cfg.to_json(), indent=2))
        log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        logf = (cfg.out / "train_log.jsonl").open("a", encoding="utf-8")
        per_step = cfg.batch * (1 + cfg.negatives)
        t0 = time.perf_counter()
        start_step = self.step
        ema: float | None = None
        stopped = "steps"
        until = until if until is not None else cfg.stop_at
        end = cfg.steps if until is None else min(until, cfg.steps)
        while self.step < end:
            loss = self.train_step()
            ema = loss if ema is None else 0.95 * ema + 0.05 * loss
            done = self.step - start_step
            elapsed = time.perf_counter() - t0
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                rate = done * per_step / elapsed
                eta = (cfg.steps - self.step) * elapsed / max(done, 1)
                log(
                    f"step {self.step}/{cfg.steps} loss {loss:.4f} (ema {ema:.4f}) "
                    f"lr {self.sched.get_last_lr()[0]:.2e} {rate:.1f} pairs/s "
                    f"elapsed {elapsed / 60:.1f} min eta {eta / 60:.1f} min"
                )
                logf.write(
                    json.dumps(
                        {"step": self.step, "loss": loss, "ema": ema, "pairs_s": rate, "s": elapsed}
                    )
                    + "\n"
                )
                logf.flush()
            if self.step % cfg.save_every == 0:
                self.save()
            if cfg.max_minutes is not None and elapsed > cfg.max_minutes * 60:
                stopped = "time"
                break
        logf.close()
        self.save()
        return {
            "steps": self.step,
            "stopped": stopped,
            "minutes": (time.perf_counter() - t0) / 60,
            "pairs": (self.step - start_step) * per_step,
            "rows": len(self.rows),
            "final_loss_ema": ema,
        }

    def save_model(self, folder: Path) -> Path:
        """The trained weights as a Hugging Face checkpoint folder (+ twostage.json)."""
        settings = {"kind": "reranker", "max_length": self.cfg.max_length}
        return save_checkpoint(self.model, folder, self.tokenizer, settings)


@torch.no_grad()
def score_pairs(
    model: BertCrossEncoder, packer: Packer, pairs: Sequence[tuple[str, str]], batch: int = 64
) -> np.ndarray:
    """Model logits for pairs (eval mode, fp32): float32 [n]."""
    model.eval()
    out = np.empty(len(pairs), dtype=np.float32)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][1]))
    dev = next(model.parameters()).device
    for s in range(0, len(order), batch):
        rows = order[s : s + batch]
        feats = packer.batch([pairs[i] for i in rows])
        out[rows] = model(**{k: v.to(dev) for k, v in feats.items()}).float().cpu().numpy()
    return out


def train(cfg: TrainConfig, *, resume: bool = True) -> dict[str, Any]:
    """Train (resuming from ``cfg.out`` if it holds a checkpoint) and save ``cfg.out/model``."""
    tr = Trainer(cfg)
    if resume and tr.resume():
        print(f"resumed at step {tr.step}", file=sys.stderr, flush=True)
    info = tr.run()
    tr.save_model(cfg.out / "model")
    (cfg.out / "train_result.json").write_text(json.dumps(info, indent=2))
    return info


def listwise_eval(
    model: BertCrossEncoder, packer: Packer, rows: list[dict[str, Any]], negatives: int = 7
) -> float:
    """Mean listwise loss on fixed groups (positive + its first ``negatives``): no sampling."""
    pairs: list[tuple[str, str]] = []
    for r in rows:
        negs = (r["negatives"] * math.ceil(negatives / len(r["negatives"])))[:negatives]
        pairs.append((r["query"], r["positive"]))
        pairs.extend((r["query"], n) for n in negs)
    s = torch.from_numpy(score_pairs(model, packer, pairs))
    return float(listwise_loss(s, 1 + negatives))


__all__ = [
    "Packer",
    "RandomPool",
    "TrainConfig",
    "Trainer",
    "default_init",
    "listwise_eval",
    "listwise_loss",
    "margin_mse_loss",
    "pointwise_loss",
    "score_pairs",
    "step_batch",
    "step_pairs",
    "train",
]

"""What every trainer here shares: the device, the learning-rate schedule, checkpoints.

Checkpoints are written atomically to ``out/checkpoints/step-NNNNNN.pt`` with ``last.json``
naming the newest; the two newest are kept. PyTorch is imported only when called.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def device(name: str) -> torch.device:
    """``"auto"``: CUDA where available, else the CPU; any other name as torch reads it."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def linear_warmup(steps: int, warmup: float) -> Callable[[int], float]:
    """LambdaLR factor: linear warm-up over ``warmup`` of the steps, then linear decay to 0."""
    warm = max(1, int(steps * warmup))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (steps - step) / max(1, steps - warm))

    return f


class Checkpoints:
    """Resumable training state for a trainer with ``step``, ``model``, ``opt``, ``sched``,
    ``device`` and ``cfg`` (with ``out`` and ``to_json()``)."""

    step: int
    model: Any
    opt: Any
    sched: Any
    device: Any
    cfg: Any

    def state(self) -> dict[str, Any]:
        import torch

        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "config": self.cfg.to_json(),
        }

    def save(self) -> Path:
        import torch

        ckdir = Path(self.cfg.out) / "checkpoints"
        ckdir.mkdir(parents=True, exist_ok=True)
        path = ckdir / f"step-{self.step:06d}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(self.state(), tmp)
        os.replace(tmp, path)
        (ckdir / "last.json").write_text(json.dumps({"step": self.step, "path": path.name}))
        for old in sorted(ckdir.glob("step-*.pt"))[:-2]:  # keep the two newest
            old.unlink()
        return path

    def load(self, path: Path) -> None:
        import torch

        st = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["opt"])
        self.sched.load_state_dict(st["sched"])
        torch.set_rng_state(st["torch_rng"])
        self.step = int(st["step"])

    def resume(self) -> bool:
        """Load the newest checkpoint under ``out/checkpoints`` if there is one."""
        last = Path(self.cfg.out) / "checkpoints" / "last.json"
        if not last.is_file():
            return False
        self.load(last.parent / json.loads(last.read_text())["path"])
        return True


__all__ = ["Checkpoints", "device", "linear_warmup"]

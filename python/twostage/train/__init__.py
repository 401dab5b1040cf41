"""Training for twostage: hard-negative mining, cross-encoder training, ONNX export.

* :mod:`twostage.train.data`: loaders for the licensed training sets (no PyTorch).
* :mod:`twostage.train.mine`: hard negatives with the project's own bi-encoder (no PyTorch).
* :mod:`twostage.train.reranker`: listwise cross-encoder training (PyTorch).
* :mod:`twostage.train.export`: checkpoint -> int8 ONNX folder (no PyTorch).
* :mod:`twostage.train.evaluate`: NDCG@10 first stage vs reranked, latency (no PyTorch).

The command line is ``python -m twostage.train --help``; TRAINING.md has the runs.
PyTorch is the optional extra ``twostage-search[train]``; only modules of this package import it.
"""

"""Batched inference for the model stages: one process loads its model once and pushes a
whole chunk of assets through it, so the device, not Python, sets the pace.

- `BatchNet`: a loaded network split at the points where work can overlap: per-image
  preparation on the CPU (runs in prefetch threads), collation into one device batch, the
  network alone (what `python -m dam3d.benchmarks.speed` times as the raw forward) and the copy back.
- `run_halving` / `Halving`: one forward per batch; a CUDA out-of-memory halves the batch
  instead of failing the whole chunk job.
- `prefetch`: decode and preprocess the next images in a small thread pool while the
  current batch runs on the device.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BatchNet:
    """A loaded model, cut where the pipeline overlaps work.

    `prepare` must be thread-safe and CPU-only (it runs in the prefetch threads);
    `collate` stacks prepared items into one batch on the device, in the model's dtype;
    `run` is the network alone; `finish` turns its output into host numpy, one row per item.
    """

    prepare: Callable[[Any], Any]
    collate: Callable[[Sequence[Any]], Any]
    run: Callable[[Any], Any]
    finish: Callable[[Any], np.ndarray]
    device: str

    def forward(self, prepared: Sequence[Any]) -> np.ndarray:
        """One batch of prepared items through the network: (N, ...) host array."""
        import torch

        with torch.inference_mode():
            return self.finish(self.run(self.collate(list(prepared))))

    def __call__(self, images: Sequence[Any]) -> np.ndarray:
        """Prepare and forward `images` in this thread (the single-image / small-batch path)."""
        return self.forward([self.prepare(image) for image in images])


def is_cuda_oom(exc: BaseException) -> bool:
    """CUDA out-of-memory, whichever way torch reports it (older builds raise a plain RuntimeError)."""
    import torch

    oom = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Halving:
    """A batch size that halves on CUDA out-of-memory and stays reduced for the rest of the run.

    A chunk job calls it once per batch; keeping the reduced size avoids paying a failed
    forward again on every later batch.
    """

    def __init__(self, batch_size: int, *, label: str) -> None:
        self.size = max(1, int(batch_size))
        self.label = label

    def __call__(self, forward: Callable[[list[T]], Sequence[R]], items: Sequence[T]) -> list[R]:
        items = list(items)
        results: list[R] = []
        start = 0
        while start < len(items):
            batch = items[start : start + self.size]
            try:
                out = forward(batch)
            except Exception as exc:
                if len(batch) == 1 or not is_cuda_oom(exc):
                    raise
            else:
                results.extend(out)
                start += len(batch)
                continue
            # Outside the except block the traceback (and the tensors its frames hold) is gone,
            # so emptying the cache can actually give that memory back.
            _empty_cuda_cache()
            n = len(batch)
            print(f"{self.label}: CUDA out of memory at batch {n}; retrying with {n // 2}", file=sys.stderr)
            self.size = n // 2
        return results


def run_halving(forward: Callable[[list[T]], Sequence[R]], items: Sequence[T], batch_size: int, *, label: str) -> list[R]:
    """`forward` over `items` in batches of `batch_size`, halving the batch on CUDA out-of-memory.

    Returns one result per item, in order. At batch size 1 the out-of-memory error is re-raised:
    nothing smaller can be tried.
    """
    return Halving(batch_size, label=label)(forward, items)


def prefetch(
    iterable: Iterable[T], fn: Callable[[T], R], *, workers: int = 2, ahead: int | None = None
) -> Iterator[tuple[T, R | Exception]]:
    """Yield (item, fn(item)) in input order while a thread pool computes the next `ahead` items.

    Image decoding and preprocessing (Pillow and numpy release the GIL) then overlap the
    model's forward in the calling thread. An exception from `fn` is yielded in place of the
    result, not raised, so one bad asset is reported alone. Few workers by default: the job's
    granted threads are mostly for torch / onnxruntime.
    """
    ahead = max(1, ahead if ahead is not None else 2 * workers)
    items = iter(iterable)
    queue: deque = deque()
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="dam3d-prefetch")

    def submit() -> None:
        for item in items:
            queue.append((item, pool.submit(fn, item)))
            return

    try:
        for _ in range(ahead):
            submit()
        while queue:
            item, future = queue.popleft()
            submit()  # keep the pool `ahead` items ahead before handing this one out
            try:
                result: R | Exception = future.result()
            except Exception as exc:
                result = exc
            yield item, result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

"""CLIP_benchmark's own command line, mended where its latest release (1.6.2) cannot run here:
``python -m langmim.eval.clip_benchmark_cli eval ...`` takes exactly ``clip_benchmark eval``'s
arguments and runs its code, with two changes that leave every figure as it computes it:

- ``accuracy()`` calls ``float()`` on a one-element array, which numpy 2.4 refuses (TypeError), so
  zero-shot classification and the linear probe end in a traceback; here it takes ``.item()``.
- the linear probe asserts CUDA and moves tensors with ``.cuda()``; here it runs from its own
  source with ``.cuda()`` read as ``.to(device)``, so it runs on the CPU too (on a GPU, as before).
"""
from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ..errors import LangmimError

CUDA_ONLY = {  # the linear probe's source: what it says -> what runs
    "    assert device == 'cuda' # need to use cuda for this else too slow\n": "",
    ".cuda()": ".to(device)",
}


def accuracy(output, target, topk=(1,)):
    """CLIP_benchmark's top-k accuracy, the count taken with ``.item()`` (numpy 2.4 refuses ``float()``
    on its one-element array)."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]


def any_device_linear_probe() -> types.ModuleType:
    """``clip_benchmark.metrics.linear_probe`` compiled from its own source, its CUDA-only lines
    pointed at the ``device`` argument; it takes ``accuracy`` from ``zeroshot_classification`` as
    that module has it when this runs."""
    from clip_benchmark.metrics import linear_probe

    source = inspect.getsource(linear_probe)
    missing = [old.strip() for old in CUDA_ONLY if old not in source]
    if missing:
        raise LangmimError(f"clip_benchmark's linear probe ({linear_probe.__file__}) has changed: {missing} not found; "
                           "run its own `clip_benchmark eval`")
    for old, new in CUDA_ONLY.items():
        source = source.replace(old, new)
    module = types.ModuleType(linear_probe.__name__)
    module.__file__, module.__package__ = linear_probe.__file__, linear_probe.__package__
    exec(compile(source, linear_probe.__file__, "exec"), module.__dict__)
    return module


@contextmanager
def mended_clip_benchmark() -> Iterator[None]:
    """CLIP_benchmark's CLI with the numpy-2 ``accuracy()`` and the any-device linear probe, for
    the duration of the block (its modules are restored after it)."""
    from clip_benchmark import cli
    from clip_benchmark.metrics import zeroshot_classification

    saved = zeroshot_classification.accuracy, cli.linear_probe
    zeroshot_classification.accuracy = accuracy
    try:
        cli.linear_probe = any_device_linear_probe()
        yield
    finally:
        zeroshot_classification.accuracy, cli.linear_probe = saved


def main(argv: Sequence[str] | None = None) -> int:
    """``clip_benchmark`` with ``argv`` (default: this command's arguments), mended."""
    try:
        from clip_benchmark import cli
    except ImportError:
        print("CLIP_benchmark is not installed: pip install clip-benchmark", file=sys.stderr)
        return 2
    saved_argv = sys.argv
    sys.argv = ["clip_benchmark", *(sys.argv[1:] if argv is None else argv)]
    try:
        with mended_clip_benchmark():
            cli.main()
    except LangmimError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved_argv
    return 0


if __name__ == "__main__":
    sys.exit(main())

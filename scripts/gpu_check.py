"""The CUDA path in one go, for whenever a GPU is at hand (one GPU, under 8 minutes):

1. the demo in bf16 on the GPU (pre-training and evaluation), with its headline figures;
2. a torchrun step over NCCL (one rank per GPU: the process group, an all-reduce, an all-gather
   with gradient, and two langmim training steps inside the group);
3. ViT-B/16 training throughput of every method in bf16 (synthetic batches);
4. a compiled (``train.compile=true``) ViT-B/16 CLIP step against the eager one.

Writes ``OUT/gpu_check.json`` (default ``runs/gpu_check``) and prints it. ``--smoke`` runs every
part at toy sizes, and ``--device cpu`` anywhere, to check the script itself without a GPU.

    bash scripts/gpu_check.sh            # = python scripts/gpu_check.py --out runs/gpu_check
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from langmim.method_specs import METHODS as REGISTERED

SMOKE_DEMO = ["train.steps=4", "train.batch_size=16", "eval.test_size=200", "eval.probe_train_size=300",
              "eval.knn_k=[10]", "eval.scene_train_size=60", "eval.scene_test_size=30", "eval.detection_epochs=1",
              "eval.segmentation_epochs=1", "eval.shift_test_size=30", "eval.fewshot_seeds=1"]
METHODS = tuple(name for name, spec in REGISTERED.items() if not spec.needs_scene_labels)  # the ceiling needs fashion-scenes' labels


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return value, round(time.perf_counter() - start, 2)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def demo(out: Path, device: str, smoke: bool) -> dict:
    from langmim.demo import run_demo
    from langmim.eval.registry import headline_value

    run = out / "demo"
    run_demo([f"output_dir={run}", f"train.device={device}", "train.precision=bf16" if device == "cuda" else "train.precision=fp32",
              *(SMOKE_DEMO if smoke else [])])
    figures = {}
    for name in ("zeroshot", "knn", "linear", "binding", "compositional"):
        found = sorted((run / "results").glob(f"demo_{name}_*.json"))
        if found:
            figures[name] = headline_value(json.loads(found[0].read_text()))
    return {"figures": figures}


def nccl_worker(out: Path, device: str) -> None:
    """Run by torchrun: the process group, two collectives, and a tiny training run inside it."""
    import torch.distributed as dist

    from langmim import dist as distributed
    from langmim.config import load_config
    from langmim.engine.loop import pretrain

    local = int(os.environ["LOCAL_RANK"])
    if device == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    where = torch.device(device, local) if device == "cuda" else torch.device("cpu")
    total = distributed.all_reduce_sum(torch.ones(1, device=where)).item()
    x = torch.randn(4, 8, device=where, requires_grad=True)
    gathered = distributed.gather_with_grad(x)
    gathered.sum().backward()
    assert total == dist.get_world_size() and gathered.shape[0] == 4 * dist.get_world_size() and x.grad is not None
    tiny = ["model.img_size=32", "model.patch_size=8", "model.width=64", "model.depth=2", "model.heads=2", "model.embed_dim=32",
            "model.text_width=32", "model.text_depth=1", "model.text_heads=2", "model.context_length=24"]
    pretrain(load_config(None, [*tiny, "method=clip", f"output_dir={out / 'nccl_run'}", "train.steps=2", "train.batch_size=8",
                                f"train.device={device}"]), log_tensorboard=False)
    dist.destroy_process_group()


def nccl(out: Path, device: str) -> dict:
    procs = max(1, torch.cuda.device_count()) if device == "cuda" else 1
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", __file__,
           "--nccl-worker", "--out", str(out), "--device", device]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return {"ranks": procs, "backend": "nccl" if device == "cuda" else "gloo"}


def steps_per_s(cfg_overrides: list[str], device: torch.device, warmup: int, timed_steps: int) -> float:
    from langmim.config import load_config
    from langmim.engine.dryrun import build_for_dry_run, synthetic_batch
    from langmim.engine.loop import Trainer, move

    cfg = load_config(None, cfg_overrides)
    torch.manual_seed(0)
    method = build_for_dry_run(cfg).to(device)
    if cfg.train.compile:
        method.compile_towers()
    trainer = Trainer(cfg, method, device)
    batch = move(synthetic_batch(cfg, method, cfg.train.batch_size), device)
    for _ in range(warmup):
        trainer.step(batch)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(timed_steps):
        trainer.step(batch)
    synchronize(device)
    return timed_steps / (time.perf_counter() - start)


def throughput(out: Path, device: str, smoke: bool, compiled: bool = False) -> dict:
    where = torch.device(device)
    arch, batch = ("demo", 16) if smoke else ("vit_b16", 64)
    precision = "bf16" if device == "cuda" else "fp32"
    rows = {}
    for method in (("clip",) if compiled else METHODS):
        overrides = [f"model.arch={arch}", f"method={method}", f"train.batch_size={batch}", f"train.precision={precision}",
                     f"train.device={device}", "output_dir=/tmp/langmim_gpu_check", "train.steps=1000"]
        if method == "milan":  # the paper's teacher shape with random weights; at toy size the demo run of part 1
            overrides.append(f"milan.teacher.source=langmim:{out / 'demo'}" if smoke else "milan.teacher.source=openclip:ViT-B-16-quickgelu:/nonexistent.pt")
        for compile_it in ((False, True) if compiled else (False,)):
            rate = steps_per_s([*overrides, f"train.compile={str(compile_it).lower()}"], where, 3 if not compile_it else 5, 2 if smoke else 10)
            rows[f"{method}{'+compile' if compile_it else ''}"] = {"images_per_s": round(rate * batch, 1), "step_ms": round(1000 / rate, 1)}
    return {"arch": arch, "batch": batch, "precision": precision, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gpu_check")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--smoke", action="store_true", help="toy sizes: check the script itself")
    parser.add_argument("--nccl-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out)
    if args.nccl_worker:
        nccl_worker(out, args.device)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; run it on a GPU machine (or --device cpu --smoke to check the script)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out.mkdir(parents=True, exist_ok=True)
    report = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
              "bf16": bool(args.device == "cuda" and torch.cuda.is_bf16_supported()), "smoke": args.smoke, "parts": {}}
    parts = {"demo": lambda: demo(out, args.device, args.smoke), "nccl": lambda: nccl(out, args.device),
             "throughput": lambda: throughput(out, args.device, args.smoke),
             "compile": lambda: throughput(out, args.device, args.smoke, compiled=True)}
    for name, run in parts.items():
        try:
            value, seconds = timed(run)
            report["parts"][name] = {"ok": True, "seconds": seconds, **value}
        except Exception as err:  # record and go on: one broken part must not hide the others
            report["parts"][name] = {"ok": False, "error": f"{type(err).__name__}: {str(err)[-1500:]}"}
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    sys.exit(0 if all(p["ok"] for p in report["parts"].values()) else 1)


if __name__ == "__main__":
    main()

"""Training throughput of every method against what this machine's matrix multiply can do.

    python benchmarks/throughput.py [--quick] [--only NAME_SUBSTRING]
    python benchmarks/throughput.py --table     # the table of benchmarks/README.md and the targets, from the recorded results

Each setting runs in a fresh process (peak resident memory is per process) on synthetic batches
(random images, masking noise, captions): warm-up steps, then timed steps split into forward,
backward and optimizer (``Trainer.phase_seconds``). Training FLOPs are counted by
``torch.utils.flop_counter`` from the ops' shapes (1 multiply-accumulate = 2 FLOPs) on one
extra step; model FLOPs utilisation (MFU) is achieved FLOP/s over a 2048x2048 matmul's FLOP/s,
measured in the same process and precision before and after the steps (a spread over 10% marks
the setting contended: the host's other tenants took cycles). MILAN's teacher is a CLIP of the same shape (random
weights, written once to /tmp), as in the built-in recipe; its forward is timed on its own. The
teacher rows time MILAN's paper teacher (OpenAI's CLIP ViT-B/16 shape, random weights) alone in
fp32 and bf16.
The data loader (fashion-scenes rendered at the shape's size, tokenised, masking noise drawn) is
timed beside the step, as its median batch. One JSON line per setting goes to benchmarks/results/throughput.jsonl.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

from langmim.method_specs import METHODS as REGISTERED
from results_log import append_result, cpu_name

SHAPES = {
    "demo": ["model.arch=demo"],  # 64 px, patch 16, width 128, 6 blocks; 3-layer text tower
    "demo_p8": ["model.arch=demo_p8", "data.world=web"],  # the web world and its encoder: the demo's at 8 px patches (64 tokens)
    "vit_s16": ["model.arch=vit_s16"],  # 224 px, ViT-S/16; 12-layer text tower of width 512
}
BATCHES = {"demo": [64, 128, 256], "demo_p8": [128], "vit_s16": [8, 16, 32]}
DEFAULT_BATCH = {"demo": 128, "demo_p8": 128, "vit_s16": 16}
TIMED_STEPS = {"demo": 10, "demo_p8": 5, "vit_s16": 3}
METHODS = tuple(name for name, spec in REGISTERED.items() if not spec.needs_scene_labels)  # the benchmark's ceiling trains on scene labels only
TEACHER_DIR = Path("/tmp/langmim_throughput_teachers")
TEACHER_MODEL = "openclip:ViT-B-16-quickgelu"  # MILAN's teacher (random weights: speed does not depend on them)
TEACHER_STEPS = 3


def settings(quick: bool) -> list[dict]:
    """Every setting to measure: the batch sweep in fp32, each method in bf16 at the default batch,
    RILS at smaller images (the token-count sweep), and CLIP compiled in bf16."""
    out = []
    for shape in SHAPES:
        batches = [DEFAULT_BATCH[shape]] if quick else BATCHES[shape]
        for method in METHODS:
            for batch in batches:
                out.append({"shape": shape, "method": method, "batch": batch, "precision": "fp32", "img_size": None})
            out.append({"shape": shape, "method": method, "batch": DEFAULT_BATCH[shape], "precision": "bf16", "img_size": None})
    for precision in ("fp32", "bf16"):  # MILAN's paper teacher on its own, as a ViT-S/16 student's batch feeds it
        out.append({"shape": "teacher", "method": TEACHER_MODEL, "batch": DEFAULT_BATCH["vit_s16"], "precision": precision, "img_size": None})
    if not quick:
        for size in (112, 160):
            out.append({"shape": "vit_s16", "method": "rils", "batch": DEFAULT_BATCH["vit_s16"], "precision": "fp32", "img_size": size})
        out.append({"shape": "vit_s16", "method": "clip", "batch": DEFAULT_BATCH["vit_s16"], "precision": "bf16", "img_size": None, "compile": True})
    return out


def matmul_flops_per_s(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def teacher_checkpoint(shape: str, img_size: int | None) -> Path:
    """A randomly initialised CLIP of the shape, saved as a langmim run (MILAN's teacher)."""
    from langmim.config import load_config
    from langmim.engine.checkpoint import save_checkpoint
    from langmim.engine.loop import Trainer
    from langmim.methods import build_method

    run = TEACHER_DIR / f"{shape}_{img_size}"
    if not any(run.glob("checkpoint-*.pt")):
        overrides = [*SHAPES[shape], "method=clip", f"output_dir={run}"] + ([f"model.img_size={img_size}"] if img_size else [])
        cfg = load_config(None, overrides)
        torch.manual_seed(0)
        run.mkdir(parents=True, exist_ok=True)
        save_checkpoint(Trainer(cfg, build_method(cfg), torch.device("cpu")), run, 0, 1)
    return run


def loader_images_per_s(cfg, method, min_seconds: float = 2.0, min_batches: int = 10) -> float:
    """Batches from the run's own loader (in this process, as num_workers=0 runs it), timed one by
    one after the first for at least `min_seconds` and `min_batches`; the median batch time
    counts, so a moment of contention from other tenants of the host does not."""
    from langmim.data.pretrain import build_pretrain_loader
    from langmim.models.text import build_tokenizer

    tokenizer = build_tokenizer(cfg.model.context_length, cfg.init.text) if method.has_text else None
    iterator = iter(build_pretrain_loader(cfg, tokenizer, method.visual.num_patches, start_step=0))
    next(iterator)
    seconds: list[float] = []
    while len(seconds) < min_batches or sum(seconds) < min_seconds:
        start = time.perf_counter()
        batch = next(iterator)
        seconds.append(time.perf_counter() - start)
    return batch["image"].shape[0] / statistics.median(seconds)


def measure_teacher(setting: dict) -> dict:
    """Run in a fresh process: one frozen teacher forward of a batch at 224 px, in the trainer's
    precision contexts (as MILAN's step runs it)."""
    import logging

    from langmim.engine.precision import autocast, cpu_attention_in_fp32
    from langmim.models.teacher import OpenCLIPTeacher

    logging.disable(logging.WARNING)  # open_clip's note that the weights are random
    teacher = OpenCLIPTeacher(setting["method"].split(":", 1)[1], None)
    images = torch.randn(setting["batch"], 3, 224, 224, generator=torch.Generator().manual_seed(0))
    cpu, precision = torch.device("cpu"), setting["precision"]
    matmul_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    matmul_before = matmul_flops_per_s(matmul_dtype)
    with torch.no_grad(), cpu_attention_in_fp32(cpu, precision), autocast(cpu, precision):
        teacher(images)
        start = time.perf_counter()
        for _ in range(TEACHER_STEPS):
            teacher(images)
        seconds = (time.perf_counter() - start) / TEACHER_STEPS
    matmul_after = matmul_flops_per_s(matmul_dtype)
    return {"teacher_forward_s": round(seconds, 4), "images_per_s": round(setting["batch"] / seconds, 1),
            "matmul_spread": round(max(matmul_before, matmul_after) / min(matmul_before, matmul_after) - 1, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def measure(setting: dict) -> dict:
    """Run in a fresh process: one setting's step time, phase split, FLOPs, memory and loader rate."""
    if setting["shape"] == "teacher":
        return measure_teacher(setting)
    from torch.utils.flop_counter import FlopCounterMode

    from langmim.config import load_config
    from langmim.engine.dryrun import synthetic_batch
    from langmim.engine.loop import Trainer
    from langmim.engine.precision import autocast, cpu_attention_in_fp32
    from langmim.methods import build_method

    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shape, size = setting["shape"], setting["img_size"]
    overrides = [*SHAPES[shape], f"method={setting['method']}", f"train.batch_size={setting['batch']}",
                 f"train.precision={setting['precision']}", "output_dir=/tmp/langmim_throughput", "train.steps=1000"]
    if size:
        overrides.append(f"model.img_size={size}")
    if setting["method"] == "milan":
        overrides.append(f"milan.teacher.source=langmim:{teacher_checkpoint(shape, size)}")
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    method = build_method(cfg, with_teacher=True)
    if setting.get("compile"):
        method.compile_towers()
    trainer = Trainer(cfg, method, torch.device("cpu"))
    trainer.synchronize_phases = True  # a no-op on the CPU; exact phases should this run on a GPU
    batch = synthetic_batch(cfg, method, cfg.train.batch_size)
    matmul_dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
    matmul_before = matmul_flops_per_s(matmul_dtype)
    for _ in range(2):
        trainer.step(batch)
    phases: dict[str, float] = {}
    timed = TIMED_STEPS[shape]
    start = time.perf_counter()
    for _ in range(timed):
        trainer.step(batch)
        for phase, seconds in trainer.phase_seconds.items():
            phases[phase] = phases.get(phase, 0.0) + seconds / timed
    step_s = (time.perf_counter() - start) / timed
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with FlopCounterMode(display=False) as counter:
        trainer.step(batch)
    flops = counter.get_total_flops()
    teacher_s = None
    if setting["method"] == "milan":
        cpu = torch.device("cpu")
        with torch.no_grad(), cpu_attention_in_fp32(cpu, cfg.train.precision), autocast(cpu, cfg.train.precision):
            method.teacher(batch["image"])
            start = time.perf_counter()
            for _ in range(timed):
                method.teacher(batch["image"])
            teacher_s = (time.perf_counter() - start) / timed
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            method.teacher(batch["image"])
        flops -= counter.get_total_flops()  # only the student's FLOPs count toward MFU
    matmul_after = matmul_flops_per_s(matmul_dtype)
    matmul = (matmul_before + matmul_after) / 2
    return {
        "step_s": round(step_s, 4), "images_per_s": round(cfg.train.batch_size / step_s, 1),
        **{f"{phase}_s": round(seconds, 4) for phase, seconds in phases.items()},
        "teacher_forward_s": None if teacher_s is None else round(teacher_s, 4),
        "train_gflops_per_image": round(flops / cfg.train.batch_size / 1e9, 3),
        "achieved_gflop_per_s": round(flops / step_s / 1e9, 1) if teacher_s is None else round(flops / (step_s - teacher_s) / 1e9, 1),
        "matmul_gflop_per_s": round(matmul / 1e9, 1),
        "matmul_spread": round(max(matmul_before, matmul_after) / min(matmul_before, matmul_after) - 1, 3),
        "mfu": round(flops / (step_s - (teacher_s or 0.0)) / matmul, 3),
        "peak_rss_mb": round(peak_rss, 1), "rss_after_imports_mb": round(baseline_rss, 1),
        "loader_images_per_s": round(loader_images_per_s(cfg, method), 1),
        "pixels": cfg.model.img_size, "tokens": method.visual.num_patches,
    }


def latest_records() -> dict[tuple, dict]:
    """The newest record of each setting in results/throughput.jsonl."""
    from results_log import RESULTS_DIR

    records: dict[tuple, dict] = {}
    for line in (RESULTS_DIR / "throughput.jsonl").read_text().splitlines():
        r = json.loads(line)
        records[(r["shape"], r["method"], r["batch"], r["precision"] + ("+compile" if r.get("compile") else ""), r["img_size"])] = r
    return records


CONTENDED_SPREAD = 0.10


def contended(record: dict | None) -> bool:
    """The matmul reference, timed before and after the steps, moved by more than 10%: other
    tenants of the host took cycles meanwhile, so the setting's figures are noisy."""
    return bool(record) and record.get("matmul_spread", 0.0) > CONTENDED_SPREAD


def table(records: dict[tuple, dict]) -> str:
    """Markdown: one row per setting, then each throughput target with its figure."""
    rows = ["| shape | method | batch | precision | img/s | step ms | fwd / bwd / opt ms | GFLOP/img | MFU | peak RSS MB | loader img/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (shape, method, batch, precision, size), r in sorted(records.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][3], kv[0][4] or 0, kv[0][2])):
        if shape == "teacher":
            continue
        phases = " / ".join(f"{1000 * r[f'{p}_s']:.0f}" for p in ("forward", "backward", "optimizer"))
        name = shape if size is None else f"{shape} @{size}px"
        rows.append(f"| {name} | {method} | {batch} | {precision} | {r['images_per_s']} | {1000 * r['step_s']:.0f} | {phases} | "
                    f"{r['train_gflops_per_image']} | {r['mfu']:.2f}{' †' if contended(r) else ''} | {r['peak_rss_mb']:.0f} | {r['loader_images_per_s']:.0f} |")
    teacher_rows = ["| teacher forward | batch | precision | s | img/s | peak RSS MB |", "|---|---|---|---|---|---|"]
    teacher_rows += [f"| {method} | {batch} | {precision} | {r['teacher_forward_s']:.2f}{' †' if contended(r) else ''} | "
                     f"{r['images_per_s']} | {r['peak_rss_mb']:.0f} |"
                     for (shape, method, batch, precision, _), r in sorted(records.items(), key=lambda kv: kv[0][3]) if shape == "teacher"]
    note = f"† contended: the matmul reference moved more than {CONTENDED_SPREAD:.0%} during the setting"
    return "\n".join(rows + ["", *teacher_rows, "", note, "", *targets(records)])


def check(figure: str, value: float, target: str, ok: bool, *records: dict | None) -> str:
    noisy = " (from a contended setting)" if any(contended(r) for r in records) else ""
    return f"- {figure}: {value:.2f} (target {target}: {'met' if ok else 'missed'}){noisy}"


def targets(records: dict[tuple, dict]) -> list[str]:
    def get(method, precision="fp32", shape="vit_s16"):
        return records.get((shape, method, DEFAULT_BATCH[shape], precision, None))

    lines = []
    clip, rils, mae, milan = (get(m) for m in ("clip", "rils", "mae", "milan"))
    if clip and rils:
        ratio = rils["step_s"] / clip["step_s"]
        lines.append(check(f"RILS step / CLIP step (ViT-S/16, batch {DEFAULT_BATCH['vit_s16']})", ratio, "<= 1.35", ratio <= 1.35, clip, rils))
        memory = rils["peak_rss_mb"] / clip["peak_rss_mb"]
        above = (rils["peak_rss_mb"] - rils["rss_after_imports_mb"]) / (clip["peak_rss_mb"] - clip["rss_after_imports_mb"])
        lines.append(check("RILS peak RSS / CLIP's (whole process)", memory, "<= 1.4", memory <= 1.4, clip, rils))
        lines.append(check("RILS peak RSS / CLIP's (above the imports)", above, "<= 1.4", above <= 1.4, clip, rils))
    if mae and milan:
        ratio = milan["step_s"] / (mae["step_s"] + milan["teacher_forward_s"])
        lines.append(check("MILAN step / (MAE step + one teacher forward)", ratio, "<= 1", ratio <= 1, mae, milan))
    teacher = {p: records.get(("teacher", TEACHER_MODEL, DEFAULT_BATCH["vit_s16"], p, None)) for p in ("fp32", "bf16")}
    if all(teacher.values()):
        speedup = teacher["fp32"]["teacher_forward_s"] / teacher["bf16"]["teacher_forward_s"]
        lines.append(check(f"MILAN's ViT-B/16 teacher forward, fp32 / bf16 time (batch {DEFAULT_BATCH['vit_s16']})", speedup, ">= 2",
                           speedup >= 2, *teacher.values()))
    for method in METHODS:
        fp32, bf16 = get(method), get(method, "bf16")
        if fp32:
            lines.append(check(f"{method} fp32 MFU (of {fp32['matmul_gflop_per_s']:.0f} GFLOP/s)", fp32["mfu"], ">= 0.60", fp32["mfu"] >= 0.6, fp32))
        if fp32 and bf16:
            speedup = bf16["images_per_s"] / fp32["images_per_s"]
            lines.append(check(f"{method} bf16 / fp32 images/s", speedup, ">= 1.8", speedup >= 1.8, fp32, bf16))
    for shape in SHAPES:
        for method in METHODS:
            for precision in ("fp32", "bf16"):
                r = get(method, precision, shape)
                if r:
                    ratio = r["loader_images_per_s"] / r["images_per_s"]
                    lines.append(check(f"{shape} {method} {precision}: loader / step images/s", ratio, ">= 5", ratio >= 5, r))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the default batch size only, no image-size sweep")
    parser.add_argument("--only", default="", help="settings whose shape/method/precision contain this text")
    parser.add_argument("--table", action="store_true", help="print the table of benchmarks/README.md from the latest results and stop")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.table:
        print(table(latest_records()))
        return
    if args.one:
        print(json.dumps(measure(json.loads(args.one))))
        return
    for setting in settings(args.quick):
        if args.only not in f"{setting['shape']}/{setting['method']}/{setting['precision']}{'+compile' if setting.get('compile') else ''}":
            continue
        out = subprocess.run([sys.executable, __file__, "--one", json.dumps(setting)], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"setting {setting} failed:\n{out.stderr[-2000:]}")
        record = {"date": date.today().isoformat(), **setting, "threads": torch.get_num_threads(),
                  "torch": torch.__version__, "machine": platform.machine(), "cpu": cpu_name(),
                  **json.loads(out.stdout.strip().splitlines()[-1])}
        append_result("throughput", record)
        print(json.dumps(record), flush=True)
    print(table(latest_records()))



if __name__ == "__main__":
    main()

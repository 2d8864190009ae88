import os

import pytest
import torch

from langmim.method_specs import METHODS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

# A model small enough that a training step takes milliseconds on a CPU.
TINY_MODEL = [
    "model.img_size=32", "model.patch_size=8", "model.width=64", "model.depth=2", "model.heads=2",
    "model.embed_dim=32", "model.text_width=32", "model.text_depth=1", "model.text_heads=2",
    "model.context_length=24",
]
# the sizes a method's own section may hold (a decoder, SLIP's MLP), for the methods whose section has them
TINY_SECTION = {"decoder_width": 32, "decoder_depth": 1, "decoder_heads": 2, "ssl_mlp_dim": 32, "ssl_embed_dim": 16}


def tiny_overrides(run_dir, method: str, steps: int = 4, **extra) -> list[str]:
    settings = METHODS[method].settings if method in METHODS else None
    sizes = [f"{method}.{k}={v}" for k, v in TINY_SECTION.items() if settings and k in settings.__dataclass_fields__]
    base = TINY_MODEL + sizes + [
        f"method={method}", f"output_dir={run_dir}", f"train.steps={steps}", "train.batch_size=16",
        "train.warmup_steps=2", "train.log_every=1", f"train.ckpt_every={steps}", "train.lr=1e-3",
    ]
    return base + [f"{k}={v}" for k, v in extra.items()]


# Python source for this process's peak resident bytes, run inside a child process: VmHWM, the
# high-water mark of its own address space. Not ru_maxrss: at exec Linux folds the parent's peak
# into the child's (vfork shares the parent's memory until then), so every child of a pytest
# process holding 2 GB would report 2 GB.
PEAK_RSS_BYTES = "int(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:'))) * 1024"

# Evaluation sizes that keep every task to seconds.
TINY_EVAL = [
    "eval.test_size=200", "eval.probe_train_size=300", "eval.knn_k=[10,20]", "eval.fewshot_shots=[1,2]",
    "eval.fewshot_seeds=2", "eval.retrieval_size=100", "eval.scene_train_size=120",
    "eval.scene_test_size=50", "eval.segmentation_epochs=2", "eval.detection_epochs=2", "eval.finetune_train_size=256",
    "eval.finetune_epochs=1", "eval.lowshot_shots=[1,4]", "eval.shift_test_size=40",
    "eval.finetune_lowshot_fractions=[0.001,0.005]", "eval.finetune_lowshot_steps=2", "eval.finetune_segmentation_steps=2",
    "eval.finetune_detection_steps=2",
]


@pytest.fixture(scope="session")
def clip_run(tmp_path_factory):
    """One tiny CLIP run (3 steps on the built-in scenes) shared by the modules that need a trained
    checkpoint: a MILAN teacher, an evaluation subject, a checkpoint to read."""
    from langmim.config import load_config
    from langmim.engine.loop import pretrain

    run = tmp_path_factory.mktemp("clip_run")
    pretrain(load_config(None, tiny_overrides(run, "clip", steps=3) + TINY_EVAL), log_tensorboard=False)
    return run


@pytest.fixture(scope="session")
def train_items():
    """Fashion-MNIST's train split: (uint8 images (n, 28, 28), labels)."""
    from langmim.data.fashion_mnist import load_fashion_mnist

    return load_fashion_mnist("train")


@pytest.fixture(scope="session")
def test_items():
    """Fashion-MNIST's test split: (uint8 images (n, 28, 28), labels)."""
    from langmim.data.fashion_mnist import load_fashion_mnist

    return load_fashion_mnist("test")


@pytest.fixture
def tiny():
    return tiny_overrides


def bomb_png(side: int = 20000) -> bytes:
    """A PNG header claiming side x side pixels (a decompression bomb), with a token of pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")

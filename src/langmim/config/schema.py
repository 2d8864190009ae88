"""The sections every run shares (model, init, data, train, eval) as dataclasses, the
architectures that fill unset sizes, and the choices of string keys. Each method's own section
(``NAME.*``) is declared beside its registry line in ``langmim.method_specs``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..method_specs import method_spec
from ..worlds import WORLDS, WebWorld

DATASETS = ("fashion-scenes", "csv", "imagefolder", "webdataset")
PRECISIONS = ("fp32", "bf16", "auto")
DEVICES = ("auto", "cpu", "cuda", "mps")
INTERPOLATIONS = ("bicubic", "bilinear")
REPORT_SINKS = ("tensorboard", "wandb")

# Each entry fills every ``model.*`` key the user leaves unset, and the decoder sizes of a method
# whose section has them (``mae.decoder_width``, ``milan.decoder_width``...).
ARCHS: dict[str, dict] = {
    # CPU-sized: 64 px scenes, 16 px patches (16 tokens: 2.5x the images/s of 8 px patches,
    # which decided the demo's accuracy on 2 cores); text context cut to 32 tokens since the
    # generated captions are short and the text tower would otherwise dominate.
    "demo": dict(
        img_size=64, patch_size=16, width=128, depth=6, heads=4, mlp_ratio=4.0, embed_dim=128,
        text_width=128, text_depth=3, text_heads=4, context_length=32,
        decoder_width=128, decoder_depth=2, decoder_heads=4,
        ssl_mlp_dim=512, ssl_embed_dim=128,  # SLIP's MLP scaled down from 4096 and 256
    ),
    # The web world's encoder: the demo's widths at 8 px patches, an 8x8 grid of 64 tokens, so that
    # 75% masking leaves 16 visible and dense tasks read a grid finer than the scenes' 3x3 cells.
    "demo_p8": dict(
        img_size=64, patch_size=8, width=128, depth=6, heads=4, mlp_ratio=4.0, embed_dim=128,
        text_width=128, text_depth=3, text_heads=4, context_length=32,
        decoder_width=128, decoder_depth=2, decoder_heads=4,
        ssl_mlp_dim=512, ssl_embed_dim=128,
    ),
    "vit_s16": dict(
        img_size=224, patch_size=16, width=384, depth=12, heads=6, mlp_ratio=4.0, embed_dim=384,
        text_width=512, text_depth=12, text_heads=8, context_length=77,
        decoder_width=512, decoder_depth=8, decoder_heads=16,
        ssl_mlp_dim=4096, ssl_embed_dim=256,  # SLIP's, at every size
    ),
    "vit_b16": dict(
        img_size=224, patch_size=16, width=768, depth=12, heads=12, mlp_ratio=4.0, embed_dim=512,
        text_width=512, text_depth=12, text_heads=8, context_length=77,
        decoder_width=512, decoder_depth=8, decoder_heads=16,
        ssl_mlp_dim=4096, ssl_embed_dim=256,  # SLIP's, at every size
    ),
    "vit_l16": dict(  # the releases' ViT-L settings: MAE's decoder, CLIP ViT-L/14's text tower and joint width
        img_size=224, patch_size=16, width=1024, depth=24, heads=16, mlp_ratio=4.0, embed_dim=768,
        text_width=768, text_depth=12, text_heads=12, context_length=77,
        decoder_width=512, decoder_depth=8, decoder_heads=16,
        ssl_mlp_dim=4096, ssl_embed_dim=256,  # SLIP's, at every size
    ),
}


@dataclass
class ModelConfig:
    """Encoder and text tower sizes; unset ones come from ``arch``."""

    arch: str = "demo"
    img_size: Optional[int] = None
    patch_size: Optional[int] = None
    width: Optional[int] = None
    depth: Optional[int] = None
    heads: Optional[int] = None
    mlp_ratio: Optional[float] = None
    embed_dim: Optional[int] = None
    text_width: Optional[int] = None
    text_depth: Optional[int] = None
    text_heads: Optional[int] = None
    context_length: Optional[int] = None
    text_quick_gelu: bool = False  # CLIP text tower with QuickGELU: OpenAI's weights and open_clip's -quickgelu ones need it


@dataclass
class InitConfig:
    """Pre-trained weights a fresh run starts from, and which towers stay frozen."""

    vision: Optional[str] = None  # a timm ViT weights file or folder (.safetensors, .pth, .bin; local-dir)
    text: Optional[str] = None  # openclip:WEIGHTS (same text tower shape) or sentence-transformers:FOLDER (replaces it)
    lock_vision: bool = False  # clip: keep the vision tower frozen (LiT); its projection still trains
    lock_text: bool = False  # keep the text tower frozen; its projection still trains


@dataclass
class DataConfig:
    name: str = "fashion-scenes"
    root: Optional[str] = None  # fashion-scenes: the Fashion-MNIST idx files; csv: the table; imagefolder: the folder;
    # webdataset: a brace-expanded shard list, e.g. /data/laion/{00000..01023}.tar
    resampled: bool = False  # webdataset: draw shards with replacement (open_clip's --dataset-resampled)
    shuffle_buffer: int = 5000  # webdataset: samples shuffled in a buffer of this many per worker (open_clip's); 0: shard order
    augment: bool = True
    # csv, imagefolder, webdataset: RandomResizedCrop's area share, resampling, and a horizontal flip
    # (fashion-scenes draws its own layouts; with augment it flips them, swapping left/right in the caption)
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    interpolation: str = "bicubic"
    hflip: bool = False
    max_image_pixels: int = 89_478_485  # csv, imagefolder, webdataset: larger images are skipped as decompression bombs
    max_member_mb: int = 512  # webdataset: a sample with a tar member declaring more is skipped without reading it
    plain_share: float = 0.3  # fashion-scenes: share of single white/grey centred items (clean world)
    world: str = "clean"  # fashion-scenes: "clean" (exhaustive, true captions) or "web" (clutter, long tail, noisy captions)
    web: WebWorld = field(default_factory=WebWorld)  # the web world's properties (docs/data.md: values and sources)
    num_scenes: Optional[int] = None  # fashion-scenes: a fixed set of N scenes visited in seeded epochs; unset: a fresh scene per sample
    num_workers: int = 0


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 128  # global batch, split over ranks
    accum_freq: int = 1
    lr: float = 1e-3
    min_lr: float = 0.0
    warmup_steps: int = 50
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 0.0  # max global gradient norm; 0 disables clipping (timm's, open_clip's and MAE's default)
    # exempt from weight decay besides 1-D parameters (biases, norms, the logit scale): names or
    # name suffixes, e.g. [cls_token, mask_token]; [] decays the rest, as MAE, SLIP and open_clip do
    no_weight_decay: list[str] = field(default_factory=list)
    precision: str = "fp32"  # auto: bf16 autocast where the device has native bf16 (CUDA, AVX512-BF16/AMX CPUs)
    grad_checkpointing: bool = False  # recompute block activations in the backward pass: less memory, more compute
    fsdp: bool = False  # under torchrun: shard parameters, gradients and optimizer state (FSDP2) instead of DDP
    compile: bool = False  # torch.compile the vision and text towers (in place: checkpoints keep their keys)
    device: str = "auto"
    seed: int = 0
    log_every: int = 10
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])  # scalars beside metrics.jsonl: tensorboard, wandb
    ckpt_every: int = 100
    keep_checkpoints: int = 2
    # file: one checkpoint-N.pt, gathered on rank 0; sharded: a checkpoint-N.dcp folder that every
    # rank writes its own shards into (torch.distributed.checkpoint), resumable on any number of ranks
    checkpoint_format: str = "file"
    dist_timeout: float = 1800.0  # seconds a collective may wait for the other ranks (torch's default) before the run fails


@dataclass
class EvalConfig:
    probe_train_size: int = 20000  # Fashion-MNIST train images the probes fit on
    test_size: int = 10000
    batch_size: int = 256
    seed: int = 0  # fixes the probe subset and the validation split
    knn_k: list[int] = field(default_factory=lambda: [10, 20, 100, 200])
    fewshot_shots: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    fewshot_seeds: int = 5
    retrieval_size: int = 1000  # held-out captioned scenes
    scene_train_size: int = 2000  # scenes of train-split items the scene probes, detection and segmentation heads fit on
    scene_test_size: int = 1000  # scenes of test-split items they (and compositional) are scored on
    dense_refine: int = 2  # detection, segmentation: patch tokens on a grid refine x finer (refine**2 shifted passes)
    lowshot_shots: list[int] = field(default_factory=lambda: [1, 4, 16])  # scene probes: labelled examples per class
    segmentation_epochs: int = 20
    detection_epochs: int = 30
    shift_test_size: int = 2000  # test items rendered in each shifted style
    finetune_train_size: int = 20000  # Fashion-MNIST train images fine-tuning trains on (as the probes)
    finetune_epochs: int = 2
    finetune_min_steps: int = 300  # a smaller train set gets more epochs (the built-in 20,000 images: 2 epochs, 312 steps)
    finetune_lr: float = 3e-3
    finetune_layer_decay: float = 0.75  # MAE uses 0.65 for ViT-B's 12 blocks; the demo has 6
    finetune_drop_path: float = 0.1
    # finetune_lowshot, finetune_segmentation, finetune_detection (their lr, layer decay and drop-path: the three above)
    finetune_lowshot_scenes: int = 20000  # the pool of labelled scenes of train items that finetune_lowshot's fractions take
    finetune_lowshot_fractions: list[float] = field(default_factory=lambda: [0.01, 0.1])  # of that pool
    finetune_lowshot_steps: int = 200  # at least: whole epochs of each fraction's images, rounded up
    finetune_lowshot_batch_size: int = 64
    finetune_segmentation_steps: int = 300
    finetune_detection_steps: int = 300
    finetune_dense_batch_size: int = 64  # scenes per step of the two dense fine-tuning tasks
    linear_probe: str = "lbfgs"  # linear (and shift's probe): lbfgs (swept logistic regression) or mae (MAE's main_linprobe.py head and LARS)
    mae_probe_epochs: int = 90  # eval.linear_probe=mae: main_linprobe.py defaults, FINETUNE.md's ViT-B linear probing command
    mae_probe_warmup_epochs: float = 10.0
    mae_probe_batch_size: int = 16384  # capped at the train rows; lr = blr x batch / 256
    mae_probe_blr: float = 0.1
    max_image_pixels: int = 89_478_485  # image folders, caption tables, CLIP_benchmark sets: larger images are skipped as decompression bombs


LINEAR_PROBES = ("lbfgs", "mae")  # eval.linear_probe
FINETUNE_DATASETS = ("fashion-mnist", "imagefolder")
MIXUP_MODES = ("batch", "pair", "elem")  # timm Mixup's modes
GLOBAL_POOLS = ("avg", "token")  # MAE's --global_pool (patch-token mean + fc_norm) and --cls_token
ERASE_MODES = ("const", "rand", "pixel")  # timm RandomErasing's modes


@dataclass
class FinetuneConfig:
    """``langmim finetune``: MAE's ``main_finetune.py`` recipe (its argument names where it has
    them; the presets in ``configs/finetune/`` cite each value). ``batch_size`` is the effective
    batch (per GPU x GPUs x accum_iter in MAE's terms); the peak lr is ``lr``, or when unset
    ``blr * batch_size / 256``."""

    pretrained: Optional[str] = None  # a langmim run or checkpoint: its vision tower is fine-tuned, method and model come from it
    dataset: str = "fashion-mnist"  # or imagefolder: data_root/train/<class>/... and data_root/val/<class>/... (ImageNet's layout)
    data_root: Optional[str] = None  # the image folder; fashion-mnist: where its files are (default: the standard places)
    train_size: Optional[int] = None  # the first N of a seeded order of the train images; unset: all
    val_size: Optional[int] = None  # likewise for the validation images
    epochs: int = 100
    batch_size: int = 1024
    accum_iter: int = 1
    lr: Optional[float] = None
    blr: float = 1e-3
    min_lr: float = 1e-6
    warmup_epochs: float = 5.0
    layer_decay: float = 0.75
    weight_decay: float = 0.05
    drop_path: float = 0.1
    clip_grad: float = 0.0  # max gradient norm; 0: none (MAE's default None)
    smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    aa: Optional[str] = "rand-m9-mstd0.5-inc1"  # timm auto_augment policy; null: none
    color_jitter: Optional[float] = None  # used only without aa, as in timm
    reprob: float = 0.25
    remode: str = "pixel"
    recount: int = 1
    global_pool: str = "avg"
    head_init_std: float = 2e-5  # trunc_normal std of the new head's weights (MAE's)
    crop_pct: float = 0.875  # evaluation: resize to img_size / crop_pct, centre crop img_size (224 / 256)
    seed: int = 0


@dataclass
class Config:
    method: str = "rils"
    output_dir: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    # the method's own section (``NAME.*``, a dataclass from its spec), None where it has none;
    # set with ``method`` and written under the method's name
    settings: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.settings is None:
            spec = method_spec(self.method)
            self.settings = spec.settings() if spec.settings is not None else None


CHOICES: dict[str, tuple[str, ...]] = {
    "model.arch": tuple(ARCHS),
    "data.name": DATASETS,
    "train.precision": PRECISIONS,
    "train.device": DEVICES,
    "data.interpolation": INTERPOLATIONS,
    "data.world": WORLDS,
    "finetune.dataset": FINETUNE_DATASETS,
    "finetune.mixup_mode": MIXUP_MODES,
    "finetune.global_pool": GLOBAL_POOLS,
    "finetune.remode": ERASE_MODES,
    "eval.linear_probe": LINEAR_PROBES,
}

INF = float("inf")
# Numeric keys' valid ranges, checked as each value is read (before torch is imported or a run
# directory made): (low, high, ends), ends marking each bound included "[ ]" or excluded "( )".
# A list key's every item is checked; nan is in no range.
RANGES: dict[str, tuple[float, float, str]] = {
    "train.steps": (1, INF, "[)"),
    "train.batch_size": (1, INF, "[)"),
    "train.accum_freq": (1, INF, "[)"),
    "train.lr": (0, INF, "()"),
    "train.min_lr": (0, INF, "[)"),
    "train.warmup_steps": (0, INF, "[)"),
    "train.weight_decay": (0, INF, "[)"),
    "train.betas": (0, 1, "[)"),
    "train.eps": (0, INF, "()"),
    "train.grad_clip": (0, INF, "[)"),
    "train.log_every": (1, INF, "[)"),
    "train.ckpt_every": (1, INF, "[)"),
    "train.keep_checkpoints": (1, INF, "[)"),
    "train.dist_timeout": (1, INF, "[)"),
    "eval.mae_probe_epochs": (1, INF, "[)"),
    "eval.mae_probe_warmup_epochs": (0, INF, "[)"),
    "eval.mae_probe_batch_size": (1, INF, "[)"),
    "eval.mae_probe_blr": (0, INF, "()"),
    "eval.finetune_lowshot_fractions": (0, 1, "(]"),
    "eval.finetune_lowshot_scenes": (1, INF, "[)"),
    "eval.finetune_lowshot_steps": (1, INF, "[)"),
    "eval.finetune_lowshot_batch_size": (1, INF, "[)"),
    "eval.finetune_segmentation_steps": (1, INF, "[)"),
    "eval.finetune_detection_steps": (1, INF, "[)"),
    "eval.finetune_dense_batch_size": (1, INF, "[)"),
    "finetune.train_size": (1, INF, "[)"),
    "finetune.val_size": (1, INF, "[)"),
    "finetune.epochs": (1, INF, "[)"),
    "finetune.batch_size": (1, INF, "[)"),
    "finetune.accum_iter": (1, INF, "[)"),
    "finetune.lr": (0, INF, "()"),
    "finetune.blr": (0, INF, "()"),
    "finetune.min_lr": (0, INF, "[)"),
    "finetune.warmup_epochs": (0, INF, "[)"),
    "finetune.layer_decay": (0, 1, "(]"),
    "finetune.weight_decay": (0, INF, "[)"),
    "finetune.drop_path": (0, 1, "[)"),
    "finetune.clip_grad": (0, INF, "[)"),
    "finetune.smoothing": (0, 1, "[)"),
    "finetune.mixup": (0, INF, "[)"),
    "finetune.cutmix": (0, INF, "[)"),
    "finetune.mixup_prob": (0, 1, "[]"),
    "finetune.mixup_switch_prob": (0, 1, "[]"),
    "finetune.color_jitter": (0, INF, "[)"),
    "finetune.reprob": (0, 1, "[]"),
    "finetune.recount": (1, INF, "[)"),
    "finetune.crop_pct": (0, 1, "(]"),
    "finetune.head_init_std": (0, INF, "()"),
}

# Keys a resumed run may change without invalidating its checkpoint.
RESUMABLE_CHANGES = (
    "output_dir", "train.steps", "train.log_every", "train.ckpt_every", "train.keep_checkpoints", "train.checkpoint_format", "train.dist_timeout",
    "train.device", "train.report_to", "data.num_workers", "data.root", "eval.",
    "finetune.data_root", "finetune.pretrained",
)



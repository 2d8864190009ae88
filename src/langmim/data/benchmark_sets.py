"""CLIP_benchmark's WebDataset evaluation sets on disk, read and written, so one copy of a set
serves both tools (``clip_benchmark eval --dataset wds/NAME --dataset_root DIR`` and
``langmim eval --dataset wds/NAME --dataset-root DIR``).

The layout (CLIP_benchmark's ``build_wds_dataset`` and ``webdataset_builder``)::

    DIR/train/{0..N-1}.tar + nshards.txt     (optional: the probes' train split)
    DIR/test/{0..N-1}.tar + nshards.txt
    DIR/classnames.txt                        one class name per line, in label order
    DIR/zeroshot_classification_templates.txt one template per line, ``{c}`` for the class
    DIR/dataset_type.txt                      "classification" (the default) or "retrieval"

A sample is ``{key}.webp|png|jpg|jpeg`` with ``{key}.cls`` (an integer label, 0 or more) or, in a
retrieval set, ``{key}.txt`` (one caption per line). Images come out as uint8 (3, S, S) after
resizing the short side and centre-cropping, the form of the built-in data, so every task takes
them as they are. Samples that cannot be used (a member over ``MAX_MEMBER_MB`` included) are
skipped, counted and named.

Zero-shot templates are filled as CLIP_benchmark fills them (``template.format(c=name)``), but by
a checked parse, not ``str.format``: ``{c}`` is a template's only placeholder (``{{`` and ``}}``
are literal braces), so ``{x}`` or ``{c.__class__}`` is an error naming the file, not a traceback
or an attribute read. A set that langmim wrote says in ``langmim.json`` that its templates fix
"a"/"an" before the class name as the built-in benchmark does, so the written copy scores what
the built-in data scores, and holds those prompts per class in
``zeroshot_classification_prompts.json`` for CLIP_benchmark's ``--custom_template_file``, so
that it scores the same texts.
"""
from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Formatter

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DataError
from ..transforms import fill_template, fix_articles
from .folders import uint8_transform
from .images import MAX_IMAGE_PIXELS, MAX_MEMBER_MB, MAX_SHARDS, decode_rgb

IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")
LABEL_EXTENSION = {"classification": "cls", "retrieval": "txt"}
METADATA_FILE = "langmim.json"
PROMPTS_FILE = "zeroshot_classification_prompts.json"  # CLIP_benchmark's --custom_template_file: the texts langmim scores
SAVE_OPTIONS = {"webp": {"format": "webp", "lossless": True, "quality": 0, "method": 0},  # least effort: lossless, so the same pixels, and far faster
                "png": {"format": "png"}}


def set_root(root: str, name: str) -> Path:
    """``--dataset-root`` with CLIP_benchmark's placeholders ``{dataset}`` and ``{dataset_cleaned}`` filled."""
    return Path(root.format(dataset=name, dataset_cleaned=name.replace("/", "-")))


def dataset_type(root: Path) -> str:
    path = root / "dataset_type.txt"
    kind = path.read_text().strip().lower() if path.is_file() else "classification"
    if kind not in LABEL_EXTENSION:
        raise DataError(f"'{path}' says {kind!r}; langmim reads 'classification' and 'retrieval' sets")
    return kind


def read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"'{path}' not found: a CLIP_benchmark classification set needs it for zero-shot evaluation")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise DataError(f"'{path}' is empty")
    return lines


def langmim_metadata(root: Path) -> dict:
    """What a set langmim wrote says of itself (empty for any other set)."""
    return json.loads((root / METADATA_FILE).read_text()) if (root / METADATA_FILE).is_file() else {}


def check_template(template: str, path: Path) -> str:
    """``template`` if ``{c}`` is its only placeholder (``{{`` and ``}}`` stand for braces), else a
    DataError naming the file and the template."""
    try:
        fields = {(field, spec, conversion) for _, field, spec, conversion in Formatter().parse(template) if field is not None}
        valid = fields <= {("c", "", None)}
    except ValueError:  # a lone brace
        valid = False
    if not valid:
        raise DataError(f"'{path}': template {template!r}: the only placeholder allowed is {{c}} (the class name); "
                        "write literal braces as {{ and }}")
    return template


def read_templates(path: Path) -> tuple[str, ...]:
    """The templates of a zero-shot templates file, each checked."""
    return tuple(check_template(template, path) for template in read_lines(path))


def fill_class(template: str, name: str) -> str:
    """``template.format(c=name)`` of a template ``check_template`` passed, without ``str.format``."""
    return "".join(text + (name if field is not None else "") for text, field, _, _ in Formatter().parse(template))


def template_filler(root: Path) -> Callable[[str, str], str]:
    """How the set's templates take a class name: CLIP_benchmark's ``format(c=...)``, or the
    built-in benchmark's article-fixing fill for a set langmim wrote."""
    if langmim_metadata(root).get("templates") == "fix_articles":
        return lambda template, name: fix_articles(fill_class(template, name))
    return fill_class


def shard_paths(root: Path, split: str) -> list[Path]:
    """The split's ``{0..N-1}.tar`` files, N from ``nshards.txt``."""
    count_file = root / split / "nshards.txt"
    if not count_file.is_file():
        raise DataError(f"'{count_file}' not found: expected a CLIP_benchmark WebDataset set with {split}/nshards.txt and {split}/0.tar ...")
    try:
        count = int(count_file.read_text().strip())
    except ValueError:
        raise DataError(f"'{count_file}' should hold the number of shards, got {count_file.read_text().strip()!r}") from None
    if not 1 <= count <= MAX_SHARDS:
        raise DataError(f"'{count_file}' says {count} shards; expected 1 to {MAX_SHARDS:,}")
    paths = [root / split / f"{i}.tar" for i in range(count)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"'{root / split}': nshards.txt says {count} shard(s) but {', '.join(missing)} missing")
    return paths


@dataclass(frozen=True)
class Member:
    """Where one sample's image bytes lie: a tar file and the offset and size inside it."""

    tar: Path
    offset: int
    size: int


def tar_samples(path: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """{key: {extension: (offset, size)}} of one tar, keys split at the first dot as webdataset does."""
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(path) as tar:
            for info in tar:
                if info.isfile():
                    key, _, extension = Path(info.name).name.partition(".")
                    folder = str(Path(info.name).parent)
                    samples.setdefault(f"{folder}/{key}", {})[extension.lower()] = (info.offset_data, info.size)
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"'{path}' is not a readable tar file ({err})") from None
    return samples


def read_bytes(member: Member) -> bytes:
    with member.tar.open("rb") as f:
        f.seek(member.offset)
        return f.read(member.size)


class BenchmarkSplit(Dataset):
    """One split of a CLIP_benchmark WebDataset set: (uint8 image, label) pairs of a classification
    set, or {"image", "captions"} of a retrieval set, in shard and key order."""

    def __init__(self, root: str | Path, split: str, size: int, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        self.root, self.kind, self.max_pixels = Path(root), dataset_type(Path(root)), max_pixels
        self.members: list[Member] = []
        self.targets: list = []
        problems: Counter = Counter()
        self.skipped: list[str] = []
        for path in shard_paths(self.root, split):
            with path.open("rb") as f:
                for key, parts in tar_samples(path).items():
                    problem = self._add(path, f, key, parts)
                    if problem:
                        problems[problem] += 1
                        self.skipped.append(f"{path}:{key.split('/')[-1]}: {problem}")
        if self.skipped:
            counts = ", ".join(f"{n} {kind}" for kind, n in problems.items())
            print(f"{self.root / split}: skipped {len(self.skipped)} sample(s) ({counts}): {'; '.join(self.skipped[:5])}"
                  f"{' ...' if len(self.skipped) > 5 else ''}")
        if not self.members:
            raise DataError(f"'{self.root / split}' holds no usable sample")
        self.labels = torch.tensor(self.targets) if self.kind == "classification" else None
        self.transform = uint8_transform(size)

    def _add(self, path: Path, f, key: str, parts: dict[str, tuple[int, int]]) -> str | None:
        """Index one sample after checking that it decodes; the kind of problem if it does not."""
        extension = next((e for e in IMAGE_EXTENSIONS if e in parts), None)
        label_extension = LABEL_EXTENSION[self.kind]
        if extension is None:
            return "missing_image"
        if label_extension not in parts:
            return f"missing_{label_extension}"
        if max(parts[extension][1], parts[label_extension][1]) > MAX_MEMBER_MB * 2**20:
            return "oversized_member"
        member = Member(path, *parts[extension])
        f.seek(parts[label_extension][0])
        text = f.read(parts[label_extension][1]).decode("utf-8", "replace")
        if self.kind == "classification":
            try:
                target = int(text.strip())
            except ValueError:
                return "bad_label"
            if target < 0:  # a class index (its upper end is checked against classnames.txt)
                return "bad_label"
        else:
            target = [line.strip() for line in text.splitlines() if line.strip()]
            if not target:
                return "empty_caption"
        image, problem = decode_rgb(read_bytes(member), self.max_pixels)
        if image is None:
            return problem
        self.members.append(member)
        self.targets.append(target)
        return None

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, i: int):
        image, problem = decode_rgb(read_bytes(self.members[i]), self.max_pixels)
        if image is None:
            raise DataError(f"'{self.members[i].tar}': a sample decoded when the set was read but no longer does ({problem})")
        pixels = self.transform(image)
        if self.kind == "classification":
            return pixels, int(self.targets[i])
        return {"image": pixels, "captions": self.targets[i]}


@dataclass
class BenchmarkSet:
    """A CLIP_benchmark set on disk: its kind, splits, class names and templates."""

    name: str  # as CLIP_benchmark names it: wds/NAME
    root: Path
    kind: str
    test: BenchmarkSplit
    train: BenchmarkSplit | None
    classnames: list[str]
    templates: tuple[str, ...]
    fill: Callable[[str, str], str]
    same_text_hits: bool  # retrieval: a caption with the same text as an image's own counts (the built-in rule)


def open_benchmark_set(name: str, root: str, size: int, max_pixels: int = MAX_IMAGE_PIXELS) -> BenchmarkSet:
    """``--dataset wds/NAME --dataset-root DIR``: the set's test split, its train split where present."""
    folder = set_root(root, name.removeprefix("wds/"))
    if not folder.is_dir():
        raise DataError(f"--dataset-root '{folder}' is not a folder (expected a CLIP_benchmark WebDataset set for {name})")
    kind = dataset_type(folder)
    test = BenchmarkSplit(folder, "test", size, max_pixels)
    train = BenchmarkSplit(folder, "train", size, max_pixels) if (folder / "train" / "nshards.txt").is_file() else None
    classnames, templates = [], ()
    if kind == "classification":
        classnames = read_lines(folder / "classnames.txt")
        templates = read_templates(folder / "zeroshot_classification_templates.txt")
        for split in (test, train):
            if split is not None and split.labels.max() >= len(classnames):
                raise DataError(f"'{folder}': label {int(split.labels.max())} but classnames.txt names {len(classnames)} classes")
    same_text = langmim_metadata(folder).get("retrieval_hits") == "same_text"
    return BenchmarkSet(name, folder.resolve(), kind, test, train, classnames, templates, template_filler(folder), same_text)


def encode_image(pixels: torch.Tensor, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(buffer, **SAVE_OPTIONS[image_format])
    return buffer.getvalue()


def write_split(folder: Path, split: str, samples: Sequence, label_of: Callable, image_format: str, shard_size: int) -> int:
    """``folder/split/{0..}.tar`` and ``nshards.txt`` as CLIP_benchmark's converter writes them; the sample count."""
    import webdataset as wds

    extension = "cls" if (folder / "dataset_type.txt").read_text().strip() == "classification" else "txt"
    (folder / split).mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(folder / split / "%d.tar"), maxcount=shard_size, verbose=0) as sink:
        for index in range(len(samples)):  # not iteration: the scene data sets draw past their length
            image, target = label_of(samples[index])
            sink.write({"__key__": f"s{index:07d}", image_format: encode_image(image, image_format), extension: target})
        shards = sink.shard
    (folder / split / "nshards.txt").write_text(f"{shards}\n")
    return index + 1


def write_set_metadata(folder: Path, kind: str, classnames: Sequence[str] = (), templates: Sequence[str] = ()) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset_type.txt").write_text(f"{kind}\n")
    metadata = {"written_by": "langmim", "templates": "fix_articles", "retrieval_hits": "same_text"}
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=1))
    if kind == "classification":
        (folder / "classnames.txt").write_text("".join(f"{c}\n" for c in classnames))
        (folder / "zeroshot_classification_templates.txt").write_text("".join(f"{t.replace('{}', '{c}')}\n" for t in templates))
        prompts = {folder.name: {name: [fill_template(t, name) for t in templates] for name in classnames}}
        (folder / PROMPTS_FILE).write_text(json.dumps(prompts, indent=1))


def write_builtin_sets(out: Path, canvas: int = 64, train_size: int = 60000, test_size: int = 10000,
                       retrieval_size: int = 1000, seed: int = 0, root: str | None = None,
                       image_format: str = "webp", shard_size: int = 10000) -> dict[str, int]:
    """The built-in evaluation sets in CLIP_benchmark's layout: ``out/fashion-mnist`` (the first
    ``test_size`` test images and the seeded ``train_size`` train rows the probes draw at
    ``eval.probe_train_size=train_size``, ``eval.seed=seed``), and ``out/fashion-scenes-captions``
    (the held-out captioned scenes retrieval scores). Sample counts per split."""
    from ..transforms import ZEROSHOT_TEMPLATES
    from .eval_rows import seeded_subset
    from .fashion_mnist import CLASS_NAMES
    from .scenes import EVAL_SCENE_SEED, FashionMNISTCentred, FashionScenes

    sizes = {"--train-size": train_size, "--test-size": test_size, "--retrieval-size": retrieval_size, "--shard-size": shard_size}
    small = [f"{flag}={value}" for flag, value in sizes.items() if value < 1]
    if small:
        raise DataError(f"{', '.join(small)}: each must be at least 1")
    if image_format not in SAVE_OPTIONS:
        raise DataError(f"--image-format must be one of {', '.join(SAVE_OPTIONS)} (lossless), got {image_format!r}")
    classification = out / "fashion-mnist"
    write_set_metadata(classification, "classification", CLASS_NAMES, ZEROSHOT_TEMPLATES)
    train = FashionMNISTCentred("train", canvas, root=root)
    train = FashionMNISTCentred("train", canvas, indices=seeded_subset(len(train), train_size, seed), root=root)
    test = FashionMNISTCentred("test", canvas, root=root)
    test = FashionMNISTCentred("test", canvas, indices=np.arange(min(test_size, len(test))), root=root)
    counts = {f"fashion-mnist/{split}": write_split(classification, split, data, lambda s: (s[0], str(s[1])), image_format, shard_size)
              for split, data in (("train", train), ("test", test))}
    retrieval = out / "fashion-scenes-captions"
    write_set_metadata(retrieval, "retrieval")
    scenes = FashionScenes("test", canvas, seed=EVAL_SCENE_SEED, length=retrieval_size, root=root)
    counts["fashion-scenes-captions/test"] = write_split(retrieval, "test", scenes, lambda s: (s["image"], s["caption"]),
                                                         image_format, shard_size)
    return counts

"""CLIP_benchmark WebDataset evaluation sets: langmim writes the built-in ones, reads them back
with the built-in figures, and reads a set a script wrote in CLIP_benchmark's layout."""
import dataclasses
import io
import json
import shutil
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from langmim.api import load
from langmim.cli import main
from langmim.data.benchmark_sets import open_benchmark_set, template_filler
from langmim.data.fashion_mnist import CLASS_NAMES
from langmim.errors import DataError
from langmim.eval import clip_benchmark_cli
from langmim.eval.clip_benchmark import from_clip_benchmark
from langmim.eval.features import extract_features
from langmim.eval.suite import evaluate
from langmim.eval.zeroshot import zeroshot_classifier
from langmim.transforms import ZEROSHOT_TEMPLATES, fill_template

CLASSIFICATION = ["zeroshot", "knn", "linear", "fewshot"]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The built-in sets at the tiny evaluation's sizes (conftest's TINY_EVAL) and canvas."""
    out = tmp_path_factory.mktemp("cb_sets")
    assert main(["data", "clip-benchmark", "--out", str(out), "--canvas", "32", "--train-size", "300", "--test-size", "200",
                 "--retrieval-size", "100", "--shard-size", "128"]) == 0
    return out


def test_written_sets_score_what_the_builtin_data_scores(clip_run, written, tmp_path):
    model = load(clip_run)
    cfg = model.config.eval
    builtin = evaluate(model, CLASSIFICATION + ["retrieval"], cfg, tmp_path / "builtin", "m", log=lambda _: None)
    from_sets = evaluate(model, CLASSIFICATION, cfg, tmp_path / "wds", "m", log=lambda _: None,
                         dataset="wds/fashion-mnist", dataset_root=str(written / "{dataset}"))
    from_sets |= evaluate(model, ["retrieval"], cfg, tmp_path / "wds", "m", log=lambda _: None,
                          dataset="wds/fashion-scenes-captions", dataset_root=str(written / "fashion-scenes-captions"))
    for task, result in builtin.items():
        assert from_sets[task]["metrics"] == pytest.approx(result["metrics"], abs=1e-9), task
        assert from_sets[task]["split_sizes"]["test"] == result["split_sizes"]["test"]
    assert from_sets["linear"]["split_sizes"]["train"] == 300
    assert (written / "fashion-mnist" / "train" / "nshards.txt").read_text().strip() == "3"  # 300 samples, 128 a shard
    cb_file = json.loads(next((tmp_path / "wds" / "clip_benchmark").glob("wds-fashion-mnist_*_m_en_zeroshot_classification.json")).read_text())
    assert cb_file["dataset"] == "wds/fashion-mnist" and cb_file["metrics"]["acc1"] == pytest.approx(builtin["zeroshot"]["metrics"]["top1"] / 100)
    assert (tmp_path / "wds" / "m_retrieval_wds-fashion-scenes-captions.json").is_file()
    assert from_sets["retrieval"]["details"]["same_text_hits"] is True  # langmim's own set keeps the built-in rule


def test_written_templates_make_the_builtin_zeroshot_classifier(clip_run, written):
    model = load(clip_run)
    written_set = open_benchmark_set("wds/fashion-mnist", str(written / "fashion-mnist"), 32)
    builtin = zeroshot_classifier(model, list(CLASS_NAMES), ZEROSHOT_TEMPLATES, fill=fill_template)
    assert torch.equal(zeroshot_classifier(model, written_set.classnames, written_set.templates, fill=written_set.fill), builtin)
    assert written_set.fill("a {c}.", "ankle boot") == "an ankle boot."  # langmim's set: articles fixed as built in
    assert template_filler(written.parent)("a {c}.", "ankle boot") == "a ankle boot."  # elsewhere: CLIP_benchmark's fill


def test_clip_benchmark_reads_what_langmim_wrote(written):
    builder = pytest.importorskip("clip_benchmark.datasets.builder")
    dataset = builder.build_wds_dataset("fashion-mnist", transform=None, split="test", data_dir=str(written / "fashion-mnist"))
    samples = list(dataset)
    assert len(samples) == 200 and dataset.classes[9] == "ankle boot" and dataset.templates[0] == "a photo of a {c}."
    assert samples[0][0].size == (32, 32) and all(0 <= label < 10 for _, label in samples)
    captions = builder.build_wds_dataset("scenes", transform=None, split="test", data_dir=str(written / "fashion-scenes-captions"))
    first_image, first_captions = next(iter(captions))
    assert first_captions and first_captions[0].startswith("a ")


def test_clip_benchmark_eval_gives_langmim_figures_on_langmim_exports(clip_run, written, tmp_path, monkeypatch):
    """CLIP_benchmark's own evaluation (its CLI, mended for numpy 2.4 and the CPU) of the open_clip
    export on the written sets: zero-shot and retrieval equal langmim's where both read the files
    by one rule (langmim on a copy without langmim.json; CLIP_benchmark with the written prompts),
    and its linear probe trains on langmim's image embeddings."""
    pytest.importorskip("clip_benchmark")
    export = tmp_path / "open_clip"
    assert main(["export", str(clip_run), "--format", "open_clip", "--out", str(export)]) == 0
    monkeypatch.chdir(tmp_path)

    def clip_benchmark(dataset: str, task: str, *extra: str) -> dict:
        assert clip_benchmark_cli.main([
            "eval", "--dataset", dataset, "--dataset_root", str(written / "{dataset}"), "--task", task,
            "--model", f"local-dir:{export}", "--pretrained", "", "--no_amp", "--num_workers", "0", "--quiet",
            "--output", "{task}.json", *extra]) == 0
        return json.loads((tmp_path / f"{task}.json").read_text())

    model = load(clip_run)

    def langmim(task: str, dataset: str, root) -> dict:
        result = evaluate(model, [task], model.config.eval, None, "m", log=lambda _: None, dataset=dataset, dataset_root=str(root / "{dataset}"))
        return result[task]["metrics"]

    plain = tmp_path / "plain"  # the same files, read by CLIP_benchmark's rules: its template fill, own captions only
    shutil.copytree(written, plain, ignore=shutil.ignore_patterns("langmim.json"))
    prompts = str(written / "fashion-mnist" / "zeroshot_classification_prompts.json")
    retrieval = ("wds/fashion-scenes-captions", "zeroshot_retrieval")
    for (dataset, task), extra, ours in (
        (("wds/fashion-mnist", "zeroshot_classification"), (), langmim("zeroshot", "wds/fashion-mnist", plain)),
        (("wds/fashion-mnist", "zeroshot_classification"), ("--custom_template_file", prompts, "--dump_templates"),
         langmim("zeroshot", "wds/fashion-mnist", written)),
        (retrieval, ("--recall_k", "1", "5", "10"), langmim("retrieval", retrieval[0], plain)),
    ):
        output = clip_benchmark(dataset, task, *extra)
        theirs = from_clip_benchmark(output)["metrics"]
        assert theirs == pytest.approx({name: ours[name] for name in theirs}, abs=1e-4), (task, extra)
    assert output["metrics"]["image_retrieval_recall@10"] > 0
    assert json.loads((tmp_path / "zeroshot_classification.json").read_text())["templates"]["ankle boot"][0] == "a photo of an ankle boot."

    probe = clip_benchmark("wds/fashion-mnist", "linear_probe", "--feature_root", str(tmp_path / "features"))["metrics"]
    assert 0 <= probe["lp_acc1"] <= 1 and probe["weight_decay"] == 0 and probe["epochs"] == 10  # its own trainer, no sweep
    written_set = open_benchmark_set("wds/fashion-mnist", str(written / "fashion-mnist"), model.image_size)
    for split in ("train", "test"):
        (features,) = (tmp_path / "features").glob(f"*/features_{split}.pt")
        assert torch.allclose(torch.load(features), extract_features(model, getattr(written_set, split))["embed"], atol=1e-5), split


def test_the_mended_accuracy_counts_as_clip_benchmarks(monkeypatch, capsys):
    """The mended ``accuracy()`` gives CLIP_benchmark's top-k figures where numpy 2.4 makes its own
    raise; the CLI's modules are restored after a run; a linear probe whose source has changed is
    named, not patched blindly."""
    metrics = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
    from clip_benchmark import cli

    logits = torch.randn(50, 10, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 10, (50,), generator=torch.Generator().manual_seed(1))
    top1 = (logits.argmax(1) == target).float().mean().item()
    top5 = (logits.topk(5, 1).indices == target[:, None]).any(1).float().mean().item()
    assert clip_benchmark_cli.accuracy(logits, target, topk=(1, 5)) == pytest.approx([top1, top5])
    if tuple(int(part) for part in np.__version__.split(".")[:2]) >= (2, 4):
        with pytest.raises(TypeError, match="0-dimensional"):
            metrics.accuracy(logits, target, topk=(1, 5))
    original = metrics.accuracy, cli.linear_probe
    with clip_benchmark_cli.mended_clip_benchmark():
        assert metrics.accuracy is clip_benchmark_cli.accuracy and cli.linear_probe.accuracy is clip_benchmark_cli.accuracy
    assert (metrics.accuracy, cli.linear_probe) == original
    monkeypatch.setitem(clip_benchmark_cli.CUDA_ONLY, "a line no release has\n", "")
    assert clip_benchmark_cli.main(["eval"]) == 2
    err = capsys.readouterr().err
    assert "linear probe" in err and "has changed: ['a line no release has'] not found" in err
    assert (metrics.accuracy, cli.linear_probe) == original


def jpeg(side_w: int, side_h: int, value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((side_h, side_w, 3), value, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_tar(path, samples: list[dict]) -> None:
    """A tar of {key}.ext members, as CLIP_benchmark's converter (webdataset's ShardWriter) writes it."""
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            for extension, data in sample.items():
                if extension == "__key__":
                    continue
                info = tarfile.TarInfo(f"{sample['__key__']}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def write_clip_benchmark_set(root, kind: str, samples: list[dict], shards: int = 2) -> None:
    """A set in CLIP_benchmark's layout, written here without langmim: test/ only, {0..}.tar."""
    (root / "test").mkdir(parents=True)
    per_shard = -(-len(samples) // shards)
    for i in range(shards):
        write_tar(root / "test" / f"{i}.tar", samples[i * per_shard:(i + 1) * per_shard])
    (root / "test" / "nshards.txt").write_text(f"{shards}\n")
    if kind == "retrieval":
        (root / "dataset_type.txt").write_text("retrieval\n")
    else:
        (root / "classnames.txt").write_text("dark thing\nbright_thing\n")
        (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na {c}.\n")


def test_a_set_in_clip_benchmarks_layout_evaluates(clip_run, tmp_path, capsys):
    samples = [{"__key__": f"s{i:07d}", "jpg": jpeg(40 + i % 3, 48, 30 if i % 2 else 220), "cls": str(i % 2).encode()}
               for i in range(12)]
    samples[3]["jpg"] = b"not an image"
    del samples[5]["cls"]
    write_clip_benchmark_set(tmp_path / "two", "classification", samples)
    model = load(clip_run)
    results = evaluate(model, ["zeroshot"], model.config.eval, tmp_path / "out", "m", log=lambda _: None,
                       dataset="wds/two", dataset_root=str(tmp_path / "two"))
    zeroshot = results["zeroshot"]
    assert zeroshot["dataset"] == "wds/two" and zeroshot["split_sizes"]["test"] == 10
    assert zeroshot["details"]["classnames"] == ["dark thing", "bright_thing"]
    printed = capsys.readouterr().out
    assert "skipped 2 sample(s)" in printed and "s0000003: unreadable_image" in printed and "s0000005: missing_cls" in printed
    assert main(["eval", "--checkpoint", str(clip_run), "--tasks", "knn", "--dataset", "wds/two",
                 "--dataset-root", str(tmp_path / "two"), "--output", str(tmp_path / "out")]) == 2
    assert "wds/two has no train split" in capsys.readouterr().err
    tight = dataclasses.replace(model.config.eval, max_image_pixels=1000)  # the images here are 40-42 x 48
    with pytest.raises(DataError, match="holds no usable sample"):
        evaluate(model, ["zeroshot"], tight, None, "m", log=lambda _: None, dataset="wds/two", dataset_root=str(tmp_path / "two"))
    assert "s0000000: oversized_image" in capsys.readouterr().out

    pairs = [{"__key__": f"s{i:07d}", "jpg": jpeg(36, 36, 20 * i), "txt": f"a thing of shade {i}.\nshade {i}.".encode()}
             for i in range(8)]
    write_clip_benchmark_set(tmp_path / "pairs", "retrieval", pairs)
    retrieval = evaluate(model, ["retrieval"], model.config.eval, tmp_path / "out", "m", log=lambda _: None,
                         dataset="wds/pairs", dataset_root=str(tmp_path / "pairs"))["retrieval"]
    assert retrieval["split_sizes"] == {"test": 8} and retrieval["details"]["captions"] == 16 and retrieval["dataset"] == "wds/pairs"
    assert retrieval["details"]["same_text_hits"] is False  # CLIP_benchmark's rule on a set langmim did not write
    assert retrieval["metrics"]["text_to_image_R@10"] == 100.0  # every caption's own image is among the 8


@pytest.mark.parametrize("arguments, message", [
    (["--dataset", "wds/none"], "needs --dataset-root"),
    (["--dataset", "wds/none", "--dataset-root", "{tmp}/missing"], "is not a folder"),
    (["--dataset", "wds/none", "--dataset-root", "{tmp}"], "nshards.txt' not found"),
    (["--dataset-root", "{tmp}"], "--dataset-root is the folder of a --dataset wds/NAME set"),
])
def test_benchmark_set_mistakes_are_named(clip_run, tmp_path, capsys, arguments, message):
    arguments = [a.replace("{tmp}", str(tmp_path)) for a in arguments]
    assert main(["eval", "--checkpoint", str(clip_run), "--tasks", "zeroshot", "--output", str(tmp_path / "o"), *arguments]) == 2
    assert message in capsys.readouterr().err


def test_two_sets_of_one_name_do_not_share_cached_features(clip_run, written, tmp_path):
    """The feature cache is keyed by the set's folder too: a second wds/fashion-mnist (other train
    rows, same size) evaluated into the same results folder gets its own features."""
    other = tmp_path / "other"
    assert main(["data", "clip-benchmark", "--out", str(other), "--canvas", "32", "--train-size", "300",
                 "--test-size", "200", "--retrieval-size", "1", "--seed", "1"]) == 0
    model = load(clip_run)
    cfg = model.config.eval

    def knn(root, out):
        return evaluate(model, ["knn"], cfg, out, "m", log=lambda _: None, dataset="wds/fashion-mnist",
                        dataset_root=str(root / "fashion-mnist"))["knn"]["metrics"]

    first = knn(written, tmp_path / "shared")
    second = knn(other, tmp_path / "shared")
    assert second == knn(other, None) and second != first


def test_the_writer_refuses_empty_sets(tmp_path, capsys):
    assert main(["data", "clip-benchmark", "--out", str(tmp_path), "--test-size", "0"]) == 2
    assert "--test-size=0: each must be at least 1" in capsys.readouterr().err

"""The documentation holds together: README.md stays a front door (at most 12,000 bytes), every
relative link and every backticked file path in README.md, docs/*.md and benchmarks/README.md
names a file that exists (a link's #anchor a heading of its target), and no file cites a
methods document that does not ship."""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_LIMIT = 12_000
# Top-level folders of the repository: a backticked token starting with one of them is a path.
TOP = ("src/", "docs/", "benchmarks/", "tests/", "scripts/")
# Sub-packages of src/langmim, cited as e.g. `methods/base.py` in the package map.
PACKAGE = ROOT / "src" / "langmim"
SUBPACKAGES = tuple(f"{p.name}/" for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("_"))
SUFFIXES = (".py", ".md", ".yaml", ".yml", ".sh", ".json", ".jsonl", ".png", ".toml", ".txt")

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[str]:
    """Relative link targets outside code blocks and code spans."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    text = CODE_SPAN.sub("", text)
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]  # http:, mailto:, ...


def expand_braces(token: str) -> list[str]:
    """`results/{a,b}.jsonl` names two files; ranges and placeholders are not expanded."""
    match = re.search(r"\{([^{}]*,[^{}]*)\}", token)
    if not match:
        return [token]
    return [x for alt in match.group(1).split(",") for x in expand_braces(token[:match.start()] + alt + token[match.end():])]


def path_references(path: Path) -> list[str]:
    """Backticked tokens that name a file or folder of the repository (outside fenced blocks)."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    refs = []
    for span in CODE_SPAN.findall(text):
        token = span.strip()
        cited_doc = "/" in token and token.endswith(".md") and not token.startswith("runs/")  # e.g. spec/X.md
        if " " in token or not (token.startswith(TOP + SUBPACKAGES) or cited_doc):
            continue
        if any(c in token for c in "*<>$") or re.search(r"\{[^,{}]*\}", token):
            continue  # a pattern or placeholder, not one file
        if re.search(r"(^|/)([A-Z]+|[a-z]+-[A-Z])(/|$)", token):
            continue  # POINT/METHOD/seed-K style placeholders
        if not (token.endswith("/") or token.endswith(SUFFIXES)):
            continue
        refs += expand_braces(token)
    return refs


def resolves(token: str, doc: Path) -> bool:
    bases = [ROOT, doc.parent] + ([PACKAGE] if token.startswith(SUBPACKAGES) else [])
    return any((base / token).exists() for base in bases)


def tracked_text_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
        files = [ROOT / n for n in names if n]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file outside build folders
        skip = {".git", ".venv", "runs", "__pycache__", ".pytest_cache", "build"}
        files = [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]
    return [p for p in files if p.is_file() and p.suffix not in {".png", ".pt", ".safetensors", ".gz", ".tar"}]


def test_the_documents_exist():
    for doc in DOCS:
        assert doc.is_file(), doc
    assert {p.name for p in DOCS} >= {"README.md", "usage.md", "data.md", "methods.md", "evaluation.md", "scaling.md"}


def test_readme_is_a_front_door():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes, over {README_LIMIT}: move detail into docs/"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    broken = []
    for target in links(doc):
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading '#{anchor}' in {dest.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}:\n" + "\n".join(broken)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_backticked_path_exists(doc):
    missing = [t for t in path_references(doc) if not resolves(t, doc)]
    assert not missing, f"{doc.relative_to(ROOT)} names files that do not exist: {missing}"


def test_no_file_cites_a_methods_document_that_does_not_ship():
    name = "METHODS" + ".md"  # spelt apart so that this file does not cite it
    citing = [str(p.relative_to(ROOT)) for p in tracked_text_files()
              if name in p.read_text(encoding="utf-8", errors="ignore")]
    assert not citing, f"{name} does not ship; cite docs/methods.md instead: {citing}"
    assert (ROOT / "docs" / "methods.md").is_file()


def test_the_checks_can_fail(tmp_path):
    """The checkers see a broken link, a missing path and a missing anchor."""
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n\nSee [a](missing.md), [b](#nowhere), [c](#title) and `src/langmim/nothing_here.py`.\n")
    assert links(doc) == ["missing.md", "#nowhere", "#title"]
    assert anchors(doc) == {"title"}
    assert path_references(doc) == ["src/langmim/nothing_here.py"] and not resolves("src/langmim/nothing_here.py", doc)
    doc.write_text("The protocols are in `shared/spec/EVAL.md`; the demo writes `runs/demo/report.md`.\n")
    assert path_references(doc) == ["shared/spec/EVAL.md"]
    assert slug("The demo (`make demo`)") == "the-demo-make-demo"
    assert slug("CLIP_benchmark beside langmim") == "clip_benchmark-beside-langmim"


def test_every_test_the_fault_table_names_exists():
    import re

    named = set(re.findall(r"`(test_\w+)", (ROOT / "docs" / "faults.md").read_text()))
    defined = {m for path in (ROOT / "tests").glob("test_*.py") for m in re.findall(r"^def (test_\w+)", path.read_text(), re.M)}
    assert len(named) > 20 and not named - defined, sorted(named - defined)

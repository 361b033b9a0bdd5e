"""The documentation site builds with `mkdocs build --strict` (a broken link, a missing figure or an unknown API
reference fails it), and the built site has the lessons with their figures, the how-to guides and the API pages."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "docs" / "lessons").glob("[0-9][0-9]_*.py"))
HOWTOS = ("own_data", "compare", "convert", "export", "serve", "pretrained")


def load_hooks():
    spec = importlib.util.spec_from_file_location("zoo_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lesson_page_keeps_text_and_fences_code(tmp_path):
    lesson = tmp_path / "42_demo.py"
    lesson.write_text('# %% [markdown]\n# # Lesson 42 — demo\n#\n# The idea: $$x^2$$\n\n# %%\nx = 2\nassert x * x == 4\n')
    page = load_hooks().lesson_markdown(lesson)
    assert page.startswith("# Lesson 42 — demo\n")
    assert "The idea: $$x^2$$" in page
    assert "```python\nx = 2\nassert x * x == 4\n```" in page
    assert "docs/lessons/42_demo.py" in page  # how to run it


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                            capture_output=True, text=True, check=False, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return out


@pytest.mark.slow
def test_site_has_lessons_with_figures(site):
    for lesson in LESSONS:
        page = (site / "lessons" / lesson.stem / "index.html").read_text(encoding="utf-8")
        images = re.findall(r'<img[^>]+src="\.\./\.\./figures/(lesson_\d\d_[\w-]+\.png)"', page)
        assert images, f"{lesson.stem}: no figure on the page"
        for name in images:
            assert (site / "figures" / name).stat().st_size > 10_000
        assert 'class="language-python' in page or "highlight" in page  # the code, highlighted
        assert (site / "lessons" / lesson.name).is_file()  # the script itself, to download
    assert (site / "figures" / "lesson_01_rnn_vs_attention.png").is_file()
    assert "docs/lessons/01_rnn_vs_attention.py" in (site / "index.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_site_has_howtos_model_cards_and_api(site):
    for name in HOWTOS:
        assert (site / "howto" / name / "index.html").is_file(), name
    cards = (site / "model_cards" / "index.html").read_text(encoding="utf-8")
    assert "vit_mnist" in cards and "transformer_numbers" in cards
    api = {p: (site / "api" / p / "index.html").read_text(encoding="utf-8") for p in ("core", "tasks", "data", "models", "tools")}
    api["index"] = (site / "api" / "index.html").read_text(encoding="utf-8")
    for page, anchor in [("index", "zoo.registry.create_model"), ("index", "zoo.registry.list_models"),
                         ("core", "zoo.core.attention.attention"), ("core", "zoo.core.attention.MultiHeadAttention"),
                         ("core", "zoo.core.position.sinusoidal_table"), ("core", "zoo.core.blocks.TransformerBlock"),
                         ("tasks", "zoo.tasks.image.ImageClassification"), ("tasks", "zoo.tasks.text.Seq2Seq"),
                         ("data", "zoo.data.images.MNIST5k"), ("data", "zoo.data.numbers.NumberTranslation"),
                         ("models", "zoo.models.vit.VisionTransformer"), ("tools", "zoo.interop.hf.from_hf")]:
        assert f'id="{anchor}"' in api[page], f"api/{page}: no entry for {anchor}"
    # the docstrings themselves are on the pages (the formula of attention, from zoo/core/attention.py)
    assert "softmax(q kᵀ · scale + bias, masked) · v" in api["core"]



def _unparsed_markdown(html: str) -> list[str]:
    """Markdown that reached a page as text: a list item Python-Markdown did not parse (it needs a blank line before a
    list and 4-space indented paragraphs inside an item) or a `$` of a formula that fell out of its list."""
    main = html.split("<article", 1)[-1].split("</article>", 1)[0]
    text = re.sub(r'<pre.*?</pre>|<code.*?</code>|<(span|div) class="arithmatex">.*?</\1>', "", main, flags=re.S)
    return re.findall(r"(?:^|<p>)[ \t]*(?:[*+-]|\d+\.) [^\n]{0,60}", text, flags=re.M) + re.findall(r".{0,30}\$.{0,30}", text)


@pytest.mark.slow
def test_no_page_shows_unparsed_markdown(site):
    """Every page renders its lists and formulas: lesson 7's list had become one item and two lines starting with '*',
    lesson 8's steps were numbered 1, 2, 1, 2, 3 around a formula shown between '$' signs, and lists in the model
    cards and two API docstrings showed as '- ...' text."""
    pages = [p for p in sorted(site.rglob("index.html")) if p.relative_to(site).parts[0] not in ("search", "assets")]
    found = {str(p.relative_to(site)): bad for p in pages if (bad := _unparsed_markdown(p.read_text(encoding="utf-8")))}
    assert len(pages) > 20 and not found, found
    steps = (site / "lessons" / "08_end_to_end" / "index.html").read_text(encoding="utf-8")
    (numbered,) = re.findall(r"<ol>(.*?)</ol>", steps, flags=re.S)  # the five steps, one list
    assert numbered.count("<li>") == 5


def test_api_models_page_has_every_family():
    """docs/api/models.md says it documents one file per family in zoo/models/: each of them is on it."""
    page = (ROOT / "docs" / "api" / "models.md").read_text(encoding="utf-8")
    families = sorted(p.stem for p in (ROOT / "zoo" / "models").glob("*.py") if not p.name.startswith("_"))
    missing = [f for f in families if f"::: zoo.models.{f}\n" not in page]
    assert len(families) >= 14 and not missing, missing

DOC_PAGES = [ROOT / "README.md", ROOT / "docs" / "index.md", *sorted((ROOT / "docs" / "howto").glob("*.md"))]
DOTTED = re.compile(r"(?<![\w./-])zoo(?:\.[A-Za-z_]\w*)+")


def _docstrings(path: Path):
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_dotted_zoo_name_in_the_docs_exists():
    """`zoo.x.y` in the README, the site's pages and the package's docstrings names a module or an object that
    exists: a renamed or never-written module (`zoo.serve.guard`) fails here, not in a reader's import."""
    texts = [(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8")) for p in DOC_PAGES]
    texts += [(str(p.relative_to(ROOT)), doc) for p in sorted((ROOT / "zoo").rglob("*.py")) for doc in _docstrings(p)]
    missing = sorted({f"{where}: {name}" for where, text in texts for name in DOTTED.findall(text)
                      if not name.endswith((".py", ".yaml", ".md")) and not _resolves(name)})
    assert not missing, "names that do not exist:\n" + "\n".join(missing)


# the commands with argparse options of their own (fit/test/predict are LightningCLI: their options come from the recipe)
SUBCOMMANDS = {"bench": ("speed", "quality", "generate", "serve", "tta"), "compress": ("latency", "sweep")}
OPTION_COMMANDS = ("export", "viz", "compress", "compare", "bench", "serve", "models", "info")


def _shell_lines(text: str):
    """Command lines of the page's shell blocks (fenced ```bash or indented by 4; continuation lines joined) and of its
    inline code."""
    blocks = re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S)
    blocks += ["\n".join(m) for m in [re.findall(r"^ {4}(.*)$", chunk, flags=re.M)
                                      for chunk in re.split(r"\n(?! {4}|\n)", text)] if m]
    for block in blocks:
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("zoo "):
                yield line
    for span in re.findall(r"`(zoo [^`]+)`", text):  # inline, in the prose: `zoo bench speed MODEL --vs-peers`
        yield " ".join(span.split())


def _documented_options():
    """(page, command, subcommand, option) for every `--option` given to an argparse command in the docs."""
    for page in DOC_PAGES:
        for line in _shell_lines(page.read_text(encoding="utf-8")):
            words = line.split()
            command = words[1]
            if command not in OPTION_COMMANDS:
                continue
            sub = words[2] if len(words) > 2 and words[2] in SUBCOMMANDS.get(command, ()) else None
            for word in words[2:]:
                if word.startswith("--"):
                    yield page.relative_to(ROOT), command, sub, word.split("=", 1)[0]


def test_every_option_the_docs_give_a_command_exists(capsys):
    """`zoo export|viz|compress|compare|bench|serve ... --option` in the README and the site's pages: the command's
    --help lists the option (a renamed or never-written option fails here, not in a reader's shell)."""
    from zoo.cli import _command

    documented = sorted(set(_documented_options()), key=str)
    assert len(documented) > 30, documented  # the parser found the blocks
    helps: dict[tuple, str] = {}
    missing = []
    for page, command, sub, option in documented:
        if (command, sub) not in helps:
            with pytest.raises(SystemExit):
                _command(command)([*([sub] if sub else []), "--help"])
            helps[command, sub] = capsys.readouterr().out
        if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", helps[command, sub]):
            missing.append(f"{page}: zoo {command}{' ' + sub if sub else ''} {option}")
    assert not missing, "options that the command does not take:\n" + "\n".join(missing)


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.parametrize("page", ["docs/index.md", "docs/howto/compare.md", "docs/howto/pretrained.md"])
def test_python_blocks_run_as_written(page, tmp_path, monkeypatch, capsys):
    """The pages' Python blocks that need no run folder nor network run as a reader pastes them, in a fresh folder
    (pretrained.md: its first block, the shipped weights; its second reaches the Hub)."""
    blocks = _python_blocks(ROOT / page)
    assert len(blocks) == (2 if page.endswith("pretrained.md") else 1), len(blocks)
    block = blocks[0]
    monkeypatch.chdir(tmp_path)
    scope = {"__name__": "__doc_block__"}
    exec(compile(block, page, "exec"), scope)  # noqa: S102 - the page's own code
    if page.endswith("compare.md"):  # a line per model with its parameter count
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 4 and all(int(line.split()[1]) > 1_000_000 for line in lines), lines
    if page.endswith("pretrained.md"):  # the last line: a five-class head on the shipped weights, and the transform
        assert scope["model"].num_classes == 5 and scope["transform"] is not None and len(scope["tok"]) > 10


def test_readme_study_excerpt_matches_its_file():
    """The README's study YAML is an excerpt of the file it names: the same recipe, budget, seeds and metric, and
    each variant it shows with the file's overrides."""
    import yaml

    (block,) = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)
    (source,) = re.findall(r"^# (configs/compare/\S+\.yaml)", block, flags=re.M)
    shown, study = yaml.safe_load(block), yaml.safe_load((ROOT / source).read_text(encoding="utf-8"))
    for key in ("name", "recipe", "baseline", "seeds", "budget", "metric"):
        assert shown[key] == study[key], (key, shown[key], study[key])
    assert (ROOT / shown["recipe"]).is_file()
    for name, variant in shown["variants"].items():
        assert variant.get("overrides", {}) == study["variants"][name].get("overrides", {}), name


def test_readme_pretrained_block_runs_as_written(tmp_path, monkeypatch):
    """The README's block on shipped weights, as a reader pastes it (after `import zoo`), but for its lines that
    need the Hugging Face Hub (a network): those whose code names the example repository org/name."""
    blocks = [b for b in _python_blocks(ROOT / "README.md") if "zoo.list_pretrained()" in b]
    assert len(blocks) == 1
    lines = [line for line in blocks[0].splitlines() if "org/name" not in line.split("#")[0]]
    assert len(lines) >= 7, lines
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile("import zoo\n" + "\n".join(lines), "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    assert (tmp_path / "my_vit" / "model.safetensors").is_file() and scope["model"].kind == "image_classifier"


def test_compare_howto_shows_zoo_compare_and_its_validate_line_runs(capsys):
    """The how-to on comparing variants shows `zoo compare` (seeds, intervals, Holm), and its --validate line runs as
    written (the training and --report lines use the same study files, checked by tests/test_compare.py)."""
    from zoo.cli import main

    text = (ROOT / "docs" / "howto" / "compare.md").read_text(encoding="utf-8")
    lines = [ln.split("#")[0].split() for ln in re.findall(r"^zoo compare .*$", text, flags=re.M)]
    assert any("--validate" in ln for ln in lines) and any("--report" in ln for ln in lines) and "p (Holm)" in text
    (validate,) = [ln for ln in lines if "--validate" in ln]
    with pytest.raises(SystemExit) as e:
        main(validate[1:])
    assert e.value.code == 0 and "is valid" in capsys.readouterr().out

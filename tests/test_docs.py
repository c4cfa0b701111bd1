"""The docs stay true: the site builds in strict mode, every config key has a doc line, every shipped config
and every YAML snippet loads through the real config loader, every file path they name exists, and the
Python snippets marked runnable run."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distrain.config.parse import from_dict, load_config
from distrain.config.schema import Config

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = sorted((DOCS / "pages").rglob("*.md")) + [REPO / "README.md"]
FENCE = re.compile(
    r"^(?:<!-- runnable: (?P<argv>[^>]*) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL
)


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def blocks(lang: str) -> list[tuple[str, str, str | None]]:
    """(page, code, runnable argv or None) of every fenced block in `lang` in the docs and the README."""
    found = []
    for page in PAGES:
        for m in FENCE.finditer(page.read_text()):
            if m["lang"] == lang:
                found.append((str(page.relative_to(REPO)), m["body"], m["argv"]))
    return found


def test_the_site_builds_strict_with_every_config_key_on_its_reference_page(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(DOCS / "mkdocs.yml"),
            "-d",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    page = (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
    for key in _hooks().config_keys():
        assert f'<code class="config-key">{key.dotted}</code>' in page.replace("&lt;", "<").replace("&gt;", ">"), (
            key.dotted
        )
    assert "white-space: nowrap" in (tmp_path / "site" / "stylesheets" / "extra.css").read_text()
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert all(
        f"distrain {c}" in cli for c in ("train", "eval", "predict", "inspect", "export", "plot", "examples", "init")
    )
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    import distrain

    assert all(f"distrain.{name}" in api for name in distrain.__all__)
    assert "PATH=" not in api and "HOME" not in api  # os.environ shown by name, never its contents


def test_every_config_key_has_a_doc_line():
    hooks = _hooks()
    keys = list(hooks.config_keys())
    assert len(keys) >= 80 and {
        "data.global_batch_size",
        "trainer.epochs",
        "metrics.<name>.name",
        "fsdp.units",
        "optim.lr",
        "seed",
    } <= {k.dotted for k in keys}
    missing = [k.dotted for k in keys if not k.doc]
    assert not missing, f"config keys without a docstring under their field: {missing}"


def test_a_field_without_a_doc_line_is_seen():
    # The check above can fail: a field with no docstring under it has none in field_docs.
    @dataclasses.dataclass
    class Section:
        documented: int = 1
        """A doc line."""
        undocumented: int = 2

    assert _hooks().field_docs(Section) == {"documented": "A doc line."}


@pytest.mark.parametrize(
    "path",
    sorted(p.relative_to(REPO) for d in ("configs", "examples", "bench/configs") for p in (REPO / d).glob("*.yaml")),
    ids=str,
)
def test_every_shipped_config_loads(path):
    assert isinstance(load_config(REPO / path), Config)


def _merge(base: dict, snippet: dict) -> dict:
    out = dict(base)
    for key, value in snippet.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def test_every_yaml_snippet_in_the_docs_loads():
    # A snippet is a whole config or a part of one: a part is read over configs/xor.yaml, as an overlay
    # of a user's config would be. Blocks that are not distrain configs are fenced as `text`.
    base = yaml.safe_load((REPO / "configs" / "xor.yaml").read_text())
    snippets = blocks("yaml")
    assert snippets
    for page, code, _ in snippets:
        raw = yaml.safe_load(code)
        assert isinstance(raw, dict), page
        try:
            from_dict(raw if {"data", "trainer"} <= set(raw) else _merge(base, raw))
        except Exception as exc:  # noqa: BLE001 - the page is what the failure must name
            pytest.fail(f"a YAML snippet in {page} no longer loads: {exc}\n{code}")


PATH = re.compile(r"(?<![\w/.-])((?:configs|examples|slurm|launch|bench|tests|distrain|docs)/[\w./-]*\w)")


def test_every_repository_path_the_docs_name_exists():
    missing = []
    for page in PAGES:
        for path in PATH.findall(page.read_text()):
            if re.search(r"\*|[A-Z]{3,}", path):  # a pattern or a placeholder (configs/NAME.yaml)
                continue
            if not (REPO / path).exists() and not (REPO / path).with_suffix(".py").exists():
                missing.append(f"{page.relative_to(REPO)}: {path}")
    assert not missing, missing


def test_the_runnable_snippets_run(tmp_path, monkeypatch, capsys):
    runnable = [(page, code, argv) for page, code, argv in blocks("python") if argv is not None]
    assert runnable, "no snippet marked <!-- runnable: CONFIG OVERRIDES -->"
    for launcher_var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(launcher_var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(REPO / "examples")  # the snippets' configs, read as from the repository
    for i, (page, code, argv) in enumerate(runnable):
        monkeypatch.setattr(sys, "argv", [f"snippet{i}.py", *argv.split(), "log.plots=false", f"run.dir=run{i}"])
        exec(compile(code, f"{page} snippet {i}", "exec"), {"__name__": "__main__"})
        assert "test loss" in capsys.readouterr().out, page
        assert (tmp_path / f"run{i}" / "metrics.jsonl").is_file(), page


def test_the_readme_fits_on_two_screens_and_keeps_the_quick_start():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 150
    assert "bash tests/run.sh\n" in readme and (REPO / ".ci" / "run").read_text().strip().endswith("bash tests/run.sh")
    assert "-m distrain train configs/xor.yaml" in readme


def test_the_configuration_page_lists_every_key_in_its_section():
    # configuration.md's list "The sections and their keys": one bullet per section (`trainer.*`: ...), each
    # naming every key of its section, so a reader of the page (or the repository) finds every key.
    text = (DOCS / "pages" / "configuration.md").read_text()
    block = text.split("The sections and their keys:\n\n", 1)[1].split("\n\n", 1)[0]
    bullets = {}
    for bullet in ("\n" + block).split("\n- ")[1:]:
        head, _, body = bullet.partition(":")
        for section in re.findall(r"`([\w.<>]+)\.\*`", head) or ([""] if head == "top level" else []):
            bullets[section] = body
    missing = [
        key.dotted
        for section in _hooks().config_sections()
        for key in section.keys
        if f"`{key.dotted.rpartition('.')[2]}`" not in bullets.get(section.name, "")
    ]
    assert not missing, f"docs/pages/configuration.md's list of sections and keys lacks: {missing}"


def test_the_committed_reference_pages_are_what_the_code_makes_now():
    hooks = _hooks()
    pages = sorted(hooks.REFERENCE.glob("*.md"))
    assert [p.name for p in pages] == ["api.md", "cli.md", "components.md", "config.md"]
    stale = [str(p.relative_to(REPO)) for p in pages if hooks.fill(p.read_text()) != p.read_text()]
    assert not stale, f"{stale}: not what docs/hooks.py makes from the code now; run `python docs/hooks.py --write`"
    for page in pages:  # each holds its generated region, written out: a reader of the repository sees it
        text = page.read_text()
        assert text.count("<!-- end of generated:") == 1 and len(text.splitlines()) > 40, page.name
    # The check can fail: a page whose region lags behind the code is seen, and --check says so.
    config = (hooks.REFERENCE / "config.md").read_text()
    lagging = config.replace(">trainer.max_steps</code>", ">trainer.old_key</code>")
    assert hooks.fill(lagging) == config != lagging

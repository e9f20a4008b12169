"""The documentation: the generated reference pages cover every config key, CLI command and results file; the
README keeps the quick-start format CI runs and the measured numbers of the JSON; the site builds strictly."""

import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
import typing
from pathlib import Path
from types import SimpleNamespace

import pytest

from r1kit.cli import COMMANDS
from r1kit.config import Config

ROOT = Path(__file__).resolve().parent.parent
HOOKS = ROOT / "docs" / "hooks"
RESULTS = ROOT / "benchmarks" / "results"
README = (ROOT / "README.md").read_text()


def hook_module(name: str):
    if str(HOOKS) not in sys.path:
        sys.path.insert(0, str(HOOKS))
    spec = importlib.util.spec_from_file_location(f"docs_hooks_{name}", HOOKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def dotted_keys(cls, prefix: str = "") -> list[str]:
    keys, hints = [], typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        keys.append(key)
        args = typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            keys += dotted_keys(tp, key + ".")
        elif typing.get_origin(tp) is list and args and dataclasses.is_dataclass(args[0]):
            keys += dotted_keys(args[0], key + "[].")
    return keys


def row_of(page: str, key: str) -> str:
    (row,) = [line for line in page.splitlines() if line.startswith(f"| `{key}` |")]
    return row


def test_the_config_reference_has_every_key_with_its_type_default_and_comment():
    page = hook_module("config_reference").config_page()
    keys = dotted_keys(Config)
    assert len(keys) > 100 and "rollout.vllm.kv_cache_gb" in keys and "rewards[].weight" in keys
    for key in keys:
        assert f"| `{key}` |" in page, key
    assert row_of(page, "model.lora.r") == "| `model.lora.r` | int | `16` | adapter rank |"
    assert "one of `hf`, `vllm`, `server`" in row_of(page, "rollout.engine")
    # a comment line under a field with a trailing comment continues it; it does not document the next field
    assert "pypi:&lt;package&gt;" in row_of(page, "model.name_or_path")
    assert row_of(page, "model.gguf_file").endswith("dequantized to dtype |")
    assert "server: a `r1kit serve-gen` vLLM server" in row_of(page, "rollout.engine")
    assert "A local file has no held-out split" in row_of(page, "data.eval_source")
    # a comment block above a field without a trailing comment documents that field
    assert "bfloat16 (CPUs with AMX" in row_of(page, "rollout.autocast")
    assert "*knobs a preset fills when None.*" in row_of(page, "algo.advantage_estimator")


def test_the_cli_reference_has_every_command_and_option_without_running_any(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a command that ran would write runs/ here
    cli = hook_module("cli_reference")
    page = cli.cli_page()
    for name in COMMANDS:
        assert f"## r1kit {name}\n" in page, name
        parser, _ = cli.command_parser(name)
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag in page, (name, flag)
    assert "usage: r1kit train [RECIPE] [key=value ...] [--push-to-hub REPO] [--private]" in page
    assert "--max-connections MAX_CONNECTIONS" in page  # serve-ref's bounds, added from a dataclass
    assert list(tmp_path.iterdir()) == []  # every command was read, none ran


def test_a_command_that_never_parses_is_an_error_naming_it(monkeypatch):
    cli = hook_module("cli_reference")
    monkeypatch.setitem(COMMANDS, "quiet", lambda argv: None)
    with pytest.raises(RuntimeError, match="r1kit quiet: the command returned without parsing"):
        cli.command_parser("quiet")


def test_every_results_file_has_a_table_with_its_machine_versions_and_date():
    bench = hook_module("bench_tables")
    page = bench.benchmarks_page()
    files = sorted(RESULTS.glob("*.json"))
    assert files
    for path in files:
        assert f"`benchmarks/results/{path.name}`:" in page, path.name
    tiny = bench.render_file(RESULTS / "vs_trl-tiny.json")
    assert "torch 2.13.0+cpu, transformers 5.23.0, trl 1.16.0" in tiny
    assert re.search(r"(committed \d{4}-\d{2}-\d{2}|date not recorded)\.", tiny)
    assert "| tiny | fp32 | on | 4 x 8, 48 tokens | 0.362 | 1.283 | **3.45x** (3.22-3.77x over 5 rounds) |" in tiny


def test_a_results_file_of_an_unknown_kind_or_an_unknown_marker_is_an_error(tmp_path):
    bench = hook_module("bench_tables")
    (tmp_path / "mystery-run.json").write_text("{}")
    with pytest.raises(KeyError, match="mystery-run.json: no table for results of kind 'mystery'"):
        bench.benchmarks_page(tmp_path)
    hooks = hook_module("reference")
    page = SimpleNamespace(file=SimpleNamespace(src_path="speed.md"))
    with pytest.raises(ValueError, match="speed.md: no benchmark results of kind 'nope'"):
        hooks.on_page_markdown("text\n<!-- bench: nope -->\n", page, None, None)
    assert "| seed |" in hooks.on_page_markdown("<!-- bench: learning -->", page, None, None)


def test_every_bench_marker_in_the_written_pages_renders():
    bench = hook_module("bench_tables")
    kinds = set()
    for page in (ROOT / "docs").glob("*.md"):
        kinds |= set(re.findall(r"^<!-- bench: ([a-z_]+) -->$", page.read_text(), re.MULTILINE))
    assert {"vs_trl", "learning", "generation", "memory", "weight_sync", "algorithms", "kill_trials",
            "serve_ref_load"} <= kinds
    for kind in kinds:
        assert bench.render_kind(kind)


def test_the_readme_quick_start_is_the_two_commands_ci_runs():
    """CI reads these two lines and runs them verbatim in a fresh virtual environment."""
    lines = len(README.splitlines())
    assert lines <= 250, lines
    section = README.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    prose = section.lstrip("\n").split("\n", 1)[0]
    assert "CPU build of torch first" in prose and not prose.startswith("```")
    blocks = re.findall(r"^```bash\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1
    commands = [line.split("  #", 1)[0].strip() for line in blocks[0].splitlines()]
    assert commands == ['pip install -e ".[test]" && r1kit train', "python -m pytest"]


def test_the_readme_headline_numbers_are_those_of_the_results_files():
    def load(name):
        return json.loads((RESULTS / name).read_text())

    def entry(name, dtype):
        return next(e for e in load(name)["entries"] if e["dtype"] == dtype)

    tiny32, tiny16 = entry("vs_trl-tiny.json", "fp32"), entry("vs_trl-tiny.json", "bf16")
    style32, style16 = entry("vs_trl-trl-style-fp32.json", "fp32"), entry("vs_trl-trl-style-bf16.json", "bf16")
    smol32, smol16 = entry("vs_trl-smollm2.json", "fp32"), entry("vs_trl-smollm2-bf16.json", "bf16")
    for a, b in ((tiny32, tiny16), (style32, style16), (smol32, smol16)):
        assert f"{a['speedup']:.2f}x / {b['speedup']:.2f}x" in README
        assert f"{a['memory_ratio']:.2f}x / {b['memory_ratio']:.2f}x" in README
    learning = load("learning.json")["mean"]
    assert (f"{100 * learning['accuracy_before']:.1f}% -> {100 * learning['accuracy_after']:.1f}% in "
            f"{learning['wall_seconds'] / 60:.1f} min") in README
    real = load("real_model.json")
    assert (f"greedy {100 * real['before']['greedy_accuracy']:.1f}% -> {100 * real['after']['greedy_accuracy']:.1f}%, "
            f"sampled pass@1 {100 * real['before']['sampled_pass1']:.1f}% -> "
            f"{100 * real['after']['sampled_pass1']:.1f}%") in README
    tools = load("tool_world.json")
    assert (f"held-out greedy {100 * tools['accuracy_before']:.1f}% -> {100 * tools['accuracy_after']:.1f}%, answers that "
            f"call the calculator {100 * tools['tool_share_before']:.0f}% -> {100 * tools['tool_share_after']:.0f}%, in "
            f"{tools['wall_seconds'] / 60:.1f} min") in README
    kills = load("kill_trials.json")["summary"]
    assert f"{kills['identical']} of {kills['trials']} runs end bit-identical" in README


def test_the_readme_links_only_to_files_that_exist():
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_the_site_builds_with_no_warnings(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs site needs the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("material", reason="the docs site needs the docs extra: pip install -e '.[docs]'")
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "config" / "index.html").is_file()
    assert "model.lora.target_modules" in (tmp_path / "site" / "reference" / "config" / "index.html").read_text()

"""CI's reading of the README's quick start (.ci/quickstart.py): the two commands as printed, or a loud failure;
and the tests a fresh environment skipped for a missing package, as pytest node ids."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("quickstart", ROOT / ".ci" / "quickstart.py")
quickstart = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quickstart)

README = """# r1kit

## Quick start

Install torch first on a CPU machine.

```bash
pip install -e ".[test]" && r1kit train   # GRPO on the tiny world
python -m pytest                          # the test suite (slow tests: python -m pytest -m slow;
                                          # several processes: python -m pytest -m distributed)
```

```yaml
not: a command
```

## Next
```bash
echo not in the quick start
```
"""


def test_the_two_commands_exactly_as_printed():
    assert quickstart.quickstart_commands(README) == [
        'pip install -e ".[test]" && r1kit train   # GRPO on the tiny world',
        "python -m pytest                          # the test suite (slow tests: python -m pytest -m slow;"]


def test_the_readme_has_a_quick_start_ci_can_run():
    install, test = quickstart.quickstart_commands((ROOT / "README.md").read_text())
    assert "pip install" in install and "pytest" in test


@pytest.mark.parametrize("readme, error", [
    (README.replace("## Quick start", "## Quickstart"), "expected one '## Quick start' heading, found 0"),
    (README.replace("```bash\npip", "```sh\npip"), r"expected one ```bash block under '## Quick start', found 0"),
    (README.replace("python -m pytest  ", "# python -m pytest"), r"expected 2 command lines .* found 1"),
    (README.replace("```yaml", "```bash"), r"expected one ```bash block under '## Quick start', found 2"),
    (README.replace("```\n\n```yaml", "\n\n```yaml"), r"not closed|found 1"),
])
def test_anything_but_one_block_of_two_commands_fails_naming_what_it_found(readme, error):
    with pytest.raises(ValueError, match=error):
        quickstart.quickstart_commands(readme)


def test_skips_for_a_missing_package_become_node_ids(tmp_path):
    (tmp_path / "tests").mkdir()
    for name in ("test_a.py", "test_b.py"):
        (tmp_path / "tests" / name).write_text("")
    report = tmp_path / "report.xml"
    report.write_text("""<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite>
<testcase classname="" name="tests.test_a"><skipped message="collection skipped">('tests/test_a.py', 2,
 "Skipped: pip install 'r1kit[gguf]'")</skipped></testcase>
<testcase classname="tests.test_b.TestK" name="test_k[1]"><skipped message="could not import 'wandb'">x</skipped></testcase>
<testcase classname="tests.test_b" name="test_c"><skipped message="no oneDNN bf16 on this CPU">x</skipped></testcase>
<testcase classname="tests.test_b" name="test_d"/>
</testsuite></testsuites>""")
    assert quickstart.tests_skipped_for_an_install(str(report), tmp_path) == [
        "tests/test_a.py", "tests/test_b.py::TestK::test_k[1]"]  # the oneDNN skip stays: this CPU lacks it

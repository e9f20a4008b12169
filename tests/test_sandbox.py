"""The `python` tool's sandbox with hostile code: each run is contained and reported as a tool error."""

import os
import subprocess

import pytest

from r1kit.config import ConfigError
from r1kit.tools.sandbox import SandboxLimits, python_tool, run_sandboxed

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="isolation=namespaces needs root")
LIMITS = dict(timeout_s=1.5, cpu_s=1, memory_mb=512, max_processes=16, max_output_bytes=4000, max_file_mb=4)


def run(code: str, isolation: str = "namespaces"):
    return run_sandboxed(code, SandboxLimits(**LIMITS, isolation=isolation))


def sandbox_users_processes() -> str:
    return subprocess.run(["ps", "-u", "65534", "-o", "pid="], capture_output=True, text=True).stdout.strip()


@needs_root
def test_plain_code_runs_and_prints():
    result = run("import numpy\nprint(sum(range(10)), numpy.arange(4).sum())")
    assert (result.content, result.error) == ("45 6\n", False)


@needs_root
@pytest.mark.parametrize("name, code, message", [
    ("infinite loop", "while True: pass", "error: "),  # CPU-time or wall-time limit, whichever the machine hits first
    ("sleeping forever", "import time\ntime.sleep(100)", "wall-time limit of 1.5 s"),
    ("fork bomb", "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass", "error: "),
    ("memory bomb", "x = bytearray(8 << 30)", "MemoryError"),
    ("1 GB print", "import sys\nfor _ in range(1 << 20): sys.stdout.write('x' * 1024)", "output longer than 4000 bytes"),
    ("reading /etc/passwd", "print(open('/etc/passwd').read())", "No such file or directory: '/etc/passwd'"),
    ("reading the trainer's files", f"print(open({os.path.abspath(__file__)!r}).read())", "No such file or directory"),
    ("writing outside its directory", "open('/usr/evil', 'w').write('x')", "Permission denied: '/usr/evil'"),
    ("writing where the trainer writes", f"open({os.path.dirname(os.path.abspath(__file__))!r} + '/evil', 'w')",
     "No such file or directory"),  # hidden: that directory does not exist inside
    ("a large file", "open('big', 'wb').write(b'x' * (64 << 20))", "error: "),
    ("network", "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)", "Network is unreachable"),
    ("raising", "raise ValueError('boom')", "ValueError: boom"),
])
def test_hostile_code_is_contained(name, code, message):
    result = run(code)
    assert result.error and message in result.content, (name, result.content[-300:])
    assert len(result.content) < 4200
    assert not sandbox_users_processes()  # nothing it started outlives it


@needs_root
def test_killing_its_parent_does_not_reach_the_trainer(tmp_path):
    """The code is PID 1 of its own PID namespace: its parent (the root supervisor) is outside it (getppid() is 0),
    a signal to its process group reaches nothing but itself, and the trainer (this process) does not exist there."""
    result = run("import os, signal\nprint(os.getppid(), os.getpid())\nos.kill(os.getppid(), signal.SIGKILL)\nprint('done')")
    assert result.content == "0 1\ndone\n"
    result = run(f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)")
    assert result.error and "ProcessLookupError" in result.content


@needs_root
def test_its_directory_is_its_own_and_empty():
    result = run("import os\nprint(os.listdir('.'))\nopen('a.txt', 'w').write('x')\nprint(os.listdir('.'))")
    assert result.content == "[]\n['a.txt']\n" and not result.error


def test_limits_only_still_limits(tmp_path):
    """Without namespaces (any user): limits and the process group still hold; the docs say what is lost."""
    assert "output longer" in run("print('x' * 100000)", "limits_only").content
    assert "wall-time limit" in run("import time\ntime.sleep(100)", "limits_only").content
    assert "MemoryError" in run("x = bytearray(8 << 30)", "limits_only").content
    parent = run("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('alive')", "limits_only")
    assert parent.error  # its parent is the supervisor, not the trainer


def test_python_tool_checks_its_parameters():
    with pytest.raises(ConfigError, match="unknown parameter"):
        python_tool({"timeout": 1})
    with pytest.raises(ConfigError, match="must be > 0"):
        python_tool({"timeout_s": 0})
    if not ROOT:
        with pytest.raises(ConfigError, match="needs root"):
            python_tool({})
    tool = python_tool({"isolation": "limits_only", "timeout_s": 5})
    assert tool.__doc__ and tool("print(6*7)").content == "42\n"


@needs_root
def test_a_rollout_goes_on_after_a_hostile_call(tiny_tokenizer):
    """A tool error is the policy's observation: the rollout continues to its answer and the error is counted."""
    from test_multiturn import ScriptedEngine

    from r1kit.rollout.multiturn import MultiTurnEngine
    from r1kit.tools.registry import Toolbox, tool_from_function
    from r1kit.types import SamplingParams

    box = Toolbox({"python": tool_from_function(python_tool(LIMITS), "t")})
    turns = ["<tool_call>python('while True: pass')</tool_call>", "<answer>1</answer>"]
    engine = MultiTurnEngine(ScriptedEngine(tiny_tokenizer, turns), tiny_tokenizer, box, "plain", 4, 4)
    (c,) = engine.generate([[5]], 1, SamplingParams(max_new_tokens=400, seed=0))
    assert (c.turns, c.tool_calls, c.tool_errors, c.finish_reason) == (2, 1, 1, "stop")
    assert "error: " in c.text and c.text.endswith("<answer>1</answer>")

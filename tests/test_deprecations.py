"""A deprecated API that r1kit's code calls fails the test that reaches it (pyproject's filterwarnings and the guard
in conftest.py); a library's own deprecated call does not; r1kit's model calls use transformers' current names."""

import re
import warnings

import pytest
import transformers
from packaging.version import Version

from r1kit.rollout import kv_cache


def _function_in(module: str, filename: str, body: str):
    """`call()` compiled as if it were written in `module` (file `filename`): warnings name a frame's module and file."""
    namespace = {"__name__": module}
    exec(compile(f"import warnings\ndef call(inner=None):\n    {body}\n", filename, "exec"), namespace)
    return namespace["call"]


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
def test_a_deprecation_attributed_to_an_r1kit_module_is_an_error(category):
    call = _function_in("r1kit.some_module", "some_module.py",
                        f"warnings.warn('old_api is deprecated', {category.__name__}, stacklevel=1)")
    with pytest.raises(category, match="old_api is deprecated"):
        call()


def test_a_librarys_own_deprecated_call_stays_a_warning():
    library = _function_in("somelib.internals", "/site-packages/somelib/internals.py",
                           "warnings.warn('somelib uses old_api', FutureWarning, stacklevel=1)")
    caller = _function_in("r1kit.some_module", kv_cache.__file__, "inner()")  # an r1kit frame further out
    with pytest.warns(FutureWarning, match="somelib uses old_api"):
        caller(library)


def test_a_deprecated_argument_r1kit_passes_to_a_model_is_an_error(monkeypatch, small_model, tiny_tokenizer):
    """transformers 5.24 renamed past_key_values to cache; its warning names torch's Module.__call__, not r1kit:
    the guard follows the call out to r1kit's prefill."""
    if Version(transformers.__version__) < Version("5.24"):
        pytest.skip("past_key_values is transformers' current name before 5.24")
    prompts = [tiny_tokenizer("2+3=")["input_ids"]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the current name passes with no warning at all
        cache, logits, _ = kv_cache.prefill(small_model, prompts, 0, "cpu", capacity=4)
    monkeypatch.setattr(kv_cache, "_cache_keyword", lambda model_class: "past_key_values")
    with pytest.raises(FutureWarning, match=r"past_key_values.*called from r1kit: .*kv_cache\.py"):
        kv_cache.prefill(small_model, prompts, 0, "cpu", capacity=4)
    assert logits.shape == (1, small_model.config.vocab_size) and cache.get_seq_length() == len(prompts[0])


@pytest.mark.slow  # a whole `r1kit train` in a subprocess
def test_r1kit_train_prints_no_warning(small_model_dir, tmp_path):
    """A user's `r1kit train` shows no Python warning nor transformers' deprecation notices (-W default: every
    warning once, DeprecationWarnings included)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from test_trainer import FAST

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'tests'}"}
    done = subprocess.run([sys.executable, "-W", "default", "-m", "r1kit", "train", f"model.name_or_path={small_model_dir}",
                           f"output_dir={tmp_path}", "name=t", *FAST, "train.max_steps=2", "eval.before=false"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    # Python's warnings print "<file>:<line>: <Category>Warning: ..."; transformers' logger says "deprecated".
    # (DeepSpeed, where installed, logs "[WARNING] ... Setting accelerator to CPU" when imported: not a Python warning.)
    noise = [line for line in (done.stdout + done.stderr).splitlines()
             if re.search(r"\w*Warning: ", line) or "deprecat" in line.lower()]
    assert noise == []

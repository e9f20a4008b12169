"""Shared fixtures: a tiny tokenizer and a small random Llama model, built offline in memory; and the guard that
fails a test when r1kit passes a deprecated argument to a model."""

import os
import sys
import warnings

import pytest
import torch

import r1kit

torch.set_num_threads(max(1, torch.get_num_threads()))

# pyproject's filterwarnings makes a DeprecationWarning/FutureWarning attributed to an r1kit module an error. A
# deprecated argument that r1kit passes to a model is attributed instead to the wrapper that forwarded it (torch's
# Module.__call__, PEFT's and Accelerate's forward wrappers): follow the call outward past those, and when the
# first frame beyond them is r1kit's, the deprecation is r1kit's call, and an error. A library's own use of a
# deprecated API stays a warning.
R1KIT_DIR = os.path.dirname(r1kit.__file__) + os.sep
PASS_THROUGH = tuple(os.sep + os.path.join(*parts) for parts in
                     (("torch", "nn", "modules", "module.py"), ("peft", ""), ("accelerate", "")))
_warn = warnings.warn


def caller_beyond_wrappers(frame):
    """The first frame, from `frame` outward, that is not a pass-through wrapper's."""
    while frame is not None and any(part in frame.f_code.co_filename for part in PASS_THROUGH):
        frame = frame.f_back
    return frame


def warn_failing_r1kit_deprecations(message, category=None, stacklevel=1, source=None, **kwargs):
    category = category or (type(message) if isinstance(message, Warning) else UserWarning)
    if issubclass(category, (DeprecationWarning, FutureWarning)):
        try:
            caller = caller_beyond_wrappers(sys._getframe(stacklevel))  # the frame warn would name, then outward
        except ValueError:  # stacklevel beyond the stack: warn names no frame either
            caller = None
        if caller is not None and caller.f_code.co_filename.startswith(R1KIT_DIR):
            raise category(f"{message} (called from r1kit: {caller.f_code.co_filename}:{caller.f_lineno})")
    return _warn(message, category, stacklevel + 1, source, **kwargs)


warnings.warn = warn_failing_r1kit_deprecations


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from r1kit.models import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture()
def small_model(tiny_tokenizer):
    """A 2-layer, 64-wide random model: fast, and enough to test the plumbing."""
    from r1kit.models import build_tiny_model

    return build_tiny_model(tiny_tokenizer, seed=0, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=4)


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory, tiny_tokenizer):
    """The small model saved like a hub checkpoint (save_pretrained), for trainer and CLI tests."""
    from r1kit.models import build_tiny_model

    path = tmp_path_factory.mktemp("small-model")
    model = build_tiny_model(tiny_tokenizer, seed=0, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=4)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)

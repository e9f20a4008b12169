"""--push-to-hub: huggingface_hub's HfApi mocked at the boundary (repo id, repo type, what is uploaded);
failures are one line, and the result stays on disk."""

import json
from unittest import mock

import huggingface_hub
import pytest
from huggingface_hub.errors import LocalTokenNotFoundError, OfflineModeIsEnabled

from r1kit.cli import main
from r1kit.hub import HubError, check_can_push, push_to_hub


def fake_api(error=None):
    api = mock.MagicMock(name="HfApi()")
    api.create_repo.return_value = "https://huggingface.co/me/repo"
    if error is not None:
        api.upload_folder.side_effect = api.upload_file.side_effect = error
    return api


def test_a_folder_goes_to_a_model_repo(tmp_path):
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "config.json").write_text("{}")
    api = fake_api()
    assert push_to_hub(tmp_path / "final", "me/tiny-r1", "model", private=True, api=api) == "https://huggingface.co/me/repo"
    api.create_repo.assert_called_once_with("me/tiny-r1", repo_type="model", private=True, exist_ok=True)
    api.upload_folder.assert_called_once_with(repo_id="me/tiny-r1", repo_type="model",
                                              folder_path=str(tmp_path / "final"), commit_message="r1kit: upload final")
    api.upload_file.assert_not_called()


def test_a_file_goes_to_a_dataset_repo_under_its_name(tmp_path):
    data = tmp_path / "traces.parquet"
    data.write_bytes(b"PAR1")
    api = fake_api()
    push_to_hub(data, "me/traces", "dataset", api=api)
    api.create_repo.assert_called_once_with("me/traces", repo_type="dataset", private=False, exist_ok=True)
    api.upload_file.assert_called_once_with(repo_id="me/traces", repo_type="dataset", path_or_fileobj=str(data),
                                            path_in_repo="traces.parquet", commit_message="r1kit: upload traces.parquet")


@pytest.mark.parametrize("error", [
    OfflineModeIsEnabled("Cannot reach https://huggingface.co/api/repos/create: offline mode is enabled."),
    LocalTokenNotFoundError("Token is required but no token found."),
    ConnectionError("[Errno -2] Name or service not known"),
])
def test_failures_are_one_line_and_the_result_stays(tmp_path, error):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"a": 1}\n')
    with pytest.raises(HubError) as caught:
        push_to_hub(data, "me/rows", "dataset", api=fake_api(error))
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and type(error).__name__ in message
    assert "it stays on disk" in message and "hf upload me/rows" in message and "--repo-type dataset" in message
    assert data.read_text() == '{"a": 1}\n'


def test_pushes_that_cannot_succeed_fail_before_the_work(monkeypatch, tmp_path):
    with pytest.raises(HubError, match="'me/bad name' is not a hub repo id"):
        check_can_push("me/bad name")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set"):
        check_can_push("me/ok")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    with pytest.raises(HubError, match="no Hugging Face token found; log in with `hf auth login`"):
        check_can_push("me/ok")
    # through the command line: one line, exit 1, before any model is loaded or file written
    assert main(["generate", "--push-to-hub", "me/ok", f"generate.output={tmp_path / 'x.jsonl'}"]) == 1
    assert not (tmp_path / "x.jsonl").exists()


@pytest.fixture()
def hub(monkeypatch):
    """HfApi replaced by a mock; a token present, so the early check passes."""
    api = fake_api()
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: api)
    return api


def test_generate_pushes_its_output(hub, tmp_path, capsys):
    output = tmp_path / "traces.jsonl"
    assert main(["generate", "--limit", "1", "--output", str(output), "generate.n=2", "generate.max_new_tokens=4",
                 "log.progress=false", "--push-to-hub", "me/traces", "--private"]) == 0
    hub.create_repo.assert_called_once_with("me/traces", repo_type="dataset", private=True, exist_ok=True)
    assert hub.upload_file.call_args.kwargs["path_or_fileobj"] == str(output)
    assert "pushed" in capsys.readouterr().out


def test_sft_pushes_its_final_model_and_a_failed_push_keeps_it(hub, small_model_dir, tmp_path, capsys):
    args = ["sft", f"model.name_or_path={small_model_dir}", f"output_dir={tmp_path}", "sft.steps=1", "sft.batch_size=2",
            "sft.warmup_steps=0", "sft.eval_every=0", "data.train_size=8", "data.eval_size=1", "eval.max_new_tokens=2",
            "log.progress=false"]
    assert main([*args, "name=a", "--push-to-hub", "me/tiny-sft"]) == 0
    hub.create_repo.assert_called_once_with("me/tiny-sft", repo_type="model", private=False, exist_ok=True)
    assert hub.upload_folder.call_args.kwargs["folder_path"] == str(tmp_path / "a" / "final")
    hub.upload_folder.side_effect = OfflineModeIsEnabled("offline mode is enabled.")
    capsys.readouterr()
    assert main([*args, "name=b", "--push-to-hub=me/tiny-sft"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "it stays on disk" in err
    assert (tmp_path / "b" / "final" / "model.safetensors").exists()


def test_train_pushes_its_final_model(hub, small_model_dir, tmp_path):
    assert main(["train", f"model.name_or_path={small_model_dir}", f"output_dir={tmp_path}", "name=r",
                 "train.max_steps=1", "train.batch_size=4", "train.micro_batch_size=4", "rollout.num_generations=2",
                 "rollout.max_completion_length=4", "eval.before=false", "eval.after=false", "log.progress=false",
                 "log.report=false", "--push-to-hub", "me/tiny-grpo"]) == 0
    hub.create_repo.assert_called_once_with("me/tiny-grpo", repo_type="model", private=False, exist_ok=True)
    assert hub.upload_folder.call_args.kwargs["folder_path"] == str(tmp_path / "r" / "final")
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["steps"] == 1


def test_private_without_a_repo_is_refused(capsys):
    assert main(["train", "--private"]) == 2
    assert "--private only applies with --push-to-hub REPO" in capsys.readouterr().err

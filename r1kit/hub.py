"""Push a result to the Hugging Face hub: a run's final model (model repo) or a generate output (dataset repo).

    r1kit train recipes/tiny/grpo.yaml --push-to-hub you/tiny-r1            # runs/<name>/final -> model repo
    r1kit generate ... --push-to-hub you/tiny-traces --private              # OUTPUT -> dataset repo

`check_can_push` runs before any work starts (a malformed repo id, offline mode or no token fail in
seconds, not after hours of training); `push_to_hub` runs when the result is on disk. Any failure
is one HubError line saying what to do, and the result stays where it was written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

LOGIN_HINT = "log in with `hf auth login` (or set HF_TOKEN)"


class HubError(RuntimeError):
    """The push did not happen; the message says why and what to do. Nothing local was changed."""


def check_can_push(repo_id: str) -> None:
    """Fail now, before the work, where a push could not succeed: a malformed repo id, offline mode, no token."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubError(f"--push-to-hub {repo_id!r} is not a hub repo id (expected 'owner/name'): {e}") from None
    if constants.HF_HUB_OFFLINE:
        raise HubError(f"--push-to-hub {repo_id}: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it, or "
                       "drop --push-to-hub and upload later with `hf upload`")
    if not get_token():
        raise HubError(f"--push-to-hub {repo_id}: no Hugging Face token found; {LOGIN_HINT}")


def push_to_hub(path: str | Path, repo_id: str, repo_type: Literal["model", "dataset"], private: bool = False,
                api=None) -> str:
    """Upload `path` (a directory: its files at the repo root; a file: under its own name) to `repo_id`,
    creating the repo if needed (private when asked; an existing repo keeps its visibility).
    Returns the repo's URL. api: a huggingface_hub.HfApi (tests pass a mock)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError, HTTPError

    path = Path(path)
    if not path.exists():
        raise HubError(f"push to {repo_id}: {path} does not exist, nothing to upload")
    api = api or HfApi()
    message = f"r1kit: upload {path.name}"
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if path.is_dir():
            api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=str(path), commit_message=message)
        else:
            api.upload_file(repo_id=repo_id, repo_type=repo_type, path_or_fileobj=str(path), path_in_repo=path.name,
                            commit_message=message)
    # huggingface_hub's HTTP errors (401 no/bad token, 403 no write access, 404, ...) and transport errors
    # (no network), its offline-mode and missing-token errors (OSError subclasses), a bad repo id
    except (HTTPError, OSError, HFValidationError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise HubError(f"push of {path} to the hub {repo_type} repo {repo_id} failed ({type(e).__name__}: {first}); "
                       f"it stays on disk. Check the network and the repo name, {LOGIN_HINT} with write access, "
                       f"then upload it with `hf upload {repo_id} {path}"
                       f"{' --repo-type dataset' if repo_type == 'dataset' else ''}`") from None
    return str(url)

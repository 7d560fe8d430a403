"""Saved models on the Hugging Face Hub: resolve a repo id to a local folder, push a folder.

``TunedModel.from_pretrained("owner/name")`` and ``vprompt.load_adapter("owner/name")`` download the
repository's files with ``huggingface_hub`` (cached as usual); ``TunedModel.push_to_hub("owner/name")``
uploads what ``save_pretrained`` writes. Offline (``HF_HUB_OFFLINE=1`` or no network), both stop with
one clear message instead of a traceback from deep inside the HTTP stack.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..backbones.loading import shorten

#: ``owner/name`` as the Hub spells repository ids
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubUnavailableError(ConnectionError):
    """The Hugging Face Hub could not be reached (offline mode, no network, no access)."""


def _why(error: Exception) -> str:
    return shorten(str(error), 300) or type(error).__name__


def local_folder(path_or_repo_id: str | Path, revision: str | None = None) -> Path:
    """``path_or_repo_id`` as a local folder: itself when it exists, else a Hub download of that repo."""
    path = Path(path_or_repo_id)
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"{path} is a file; give the folder that save_pretrained wrote")
        return path
    text = str(path_or_repo_id)
    if not _REPO_ID.match(text) or text.startswith((".", "/")):
        raise FileNotFoundError(f"no folder {text} (and it is not a Hugging Face Hub repo id owner/name)")
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(text, revision=revision))
    except Exception as e:  # offline, unreachable, missing or private repo: one message
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise HubUnavailableError(
            f"{text!r} is not a local folder, and it cannot be downloaded from the Hugging Face Hub"
            f"{offline}: {_why(e)}"
        ) from None


def push_folder(folder: Path, repo_id: str, *, private: bool | None, token: str | None, message: str) -> str:
    """Upload ``folder``'s files to the model repo ``repo_id`` (created when missing); returns its URL."""
    from huggingface_hub import HfApi, constants

    if not _REPO_ID.match(repo_id):
        raise ValueError(f"{repo_id!r} is not a Hugging Face Hub repo id (owner/name)")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message, repo_type="model")
    except Exception as e:  # offline, unreachable, no token or no write access: one message
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise HubUnavailableError(
            f"cannot push to {repo_id!r} on the Hugging Face Hub{offline}: {_why(e)}"
        ) from None
    return str(url)

"""An offline stand-in for the Hugging Face Hub, installed from OUTSIDE the code under test.

`install(cache_dir)` replaces the network methods of `huggingface_hub.HfApi` (the class, so every
instance is covered, transformers' shared one included) with a recorder that writes each commit into
the layout of the hub cache:

    <cache_dir>/models--<org>--<name>/refs/<branch>          the commit sha of the branch head
    <cache_dir>/models--<org>--<name>/snapshots/<sha>/...    the full file tree of that commit

so a fresh process with `HF_HUB_OFFLINE=1` and `HF_HUB_CACHE=<cache_dir>` loads the pushed repo by
its id. Every call is also appended to `<cache_dir>/hub_calls.jsonl`. `upload_folder` (ours, the
Trainer's, `hf upload`'s) runs for real down to its `create_commit`: the recorder turns hf_xet's
multi-commit pipeline off (huggingface_hub then sends one `create_commit`, as without hf_xet) and
checks the card's YAML locally instead of on the Hub.

Used by the tests as a `sitecustomize.py` (this file copied into a folder put first on PYTHONPATH):
at interpreter start, when `HUB_RECORDER_CACHE` is set, the recorder installs itself before the
recipe imports anything, so production code carries no test hook. Methods it does not replace
stay offline (`HF_HUB_OFFLINE=1`) and fail, which shows any unexpected network call.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

ENV = "HUB_RECORDER_CACHE"
DEFAULT_USER = "recorder-user"
_LOCK = threading.Lock()


def install(cache_dir: str | os.PathLike, setattr=setattr) -> None:
    """Patch `HfApi` to record into `cache_dir`. Pass pytest's `monkeypatch.setattr` to undo the
    patch after a test (in-process use); the default patches for the life of the process."""
    import huggingface_hub.hf_api
    from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, ModelCard, RepoUrl
    from huggingface_hub.errors import RepositoryNotFoundError

    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    counter = [0]

    def repo_dir(repo_id: str) -> Path:
        return cache / ("models--" + (repo_id if "/" in repo_id else f"{DEFAULT_USER}/{repo_id}").replace("/", "--"))

    def head(repo_id: str, branch: str | None) -> str | None:
        ref = repo_dir(repo_id) / "refs" / (branch or "main")
        return ref.read_text() if ref.is_file() else None

    def log(**entry) -> None:
        token = entry.get("token")
        entry["token"] = repr(token) if token in (None, True, False) else "explicit-string"  # None: the login
        with open(cache / "hub_calls.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, default=str) + "\n")

    def create_repo(self, repo_id, *, token=None, private=None, exist_ok=False, **kwargs):
        with _LOCK:
            repo = repo_dir(repo_id)
            if repo.exists() and not exist_ok:
                raise FileExistsError(f"recorder: repo {repo_id} exists")
            (repo / "refs").mkdir(parents=True, exist_ok=True)
            log(call="create_repo", repo_id=repo.name[8:].replace("--", "/"), private=private, token=token)
        return RepoUrl(f"https://huggingface.co/{repo.name[8:].replace('--', '/')}")

    def list_repo_files(self, repo_id, *, revision=None, **kwargs):
        if not repo_dir(repo_id).exists():
            raise RepositoryNotFoundError(f"recorder: no repo {repo_id}")
        sha = head(repo_id, revision)
        root = repo_dir(repo_id) / "snapshots" / str(sha)
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if sha else []

    def create_commit(self, repo_id, operations, *, commit_message, token=None, revision=None, **kwargs):
        repo = repo_dir(repo_id)
        with _LOCK:
            if not repo.exists():
                raise RepositoryNotFoundError(f"recorder: no repo {repo_id} (create it first)")
            parent = head(repo_id, revision)
            counter[0] += 1
            digest = hashlib.sha1(f"{repo.name}|{parent}|{counter[0]}|{os.getpid()}".encode())
            staging = repo / "snapshots" / f".staging-{digest.hexdigest()}"
            shutil.copytree(repo / "snapshots" / parent, staging) if parent else staging.mkdir(parents=True)
            added, deleted = [], []
            for op in operations:
                target = staging / op.path_in_repo
                if isinstance(op, CommitOperationAdd):
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with op.as_file() as f:
                        target.write_bytes(f.read())
                    added.append(op.path_in_repo)
                else:  # CommitOperationDelete: upload_folder's delete_patterns
                    target.unlink()
                    deleted.append(op.path_in_repo)
                digest.update(op.path_in_repo.encode() + (target.read_bytes() if target.exists() else b"-"))
            for d in sorted((p for p in staging.rglob("*") if p.is_dir()), reverse=True):
                if not any(d.iterdir()):
                    d.rmdir()
            sha = digest.hexdigest()
            staging.rename(repo / "snapshots" / sha)
            (repo / "refs" / (revision or "main")).write_text(sha)
            log(call="create_commit", repo_id=repo.name[8:].replace("--", "/"), sha=sha, parent=parent,
                branch=revision or "main", message=commit_message, added=added, deleted=deleted, token=token)
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{sha}", commit_message=commit_message,
                          commit_description="", oid=sha)

    def create_branch(self, repo_id, *, branch, token=None, exist_ok=False, **kwargs):
        ref = repo_dir(repo_id) / "refs" / branch
        if ref.exists() and not exist_ok:
            raise FileExistsError(f"recorder: branch {branch} exists")
        if not ref.exists() and head(repo_id, None):
            ref.write_text(head(repo_id, None))
        log(call="create_branch", repo_id=repo_id, branch=branch, token=token)

    for name, fn in (("create_repo", create_repo), ("list_repo_files", list_repo_files),
                     ("create_commit", create_commit), ("create_branch", create_branch),
                     ("_validate_yaml", lambda self, content, **kwargs: ModelCard(content))):
        setattr(HfApi, name, fn)
    setattr(huggingface_hub.hf_api, "is_xet_available", lambda: False)


if os.environ.get(ENV):  # imported as sitecustomize in a subprocess of the tests
    install(os.environ[ENV])

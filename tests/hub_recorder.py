"""An offline stand-in for the Hugging Face Hub, installed from OUTSIDE the code under test.

`install(cache_dir)` replaces the network methods of `huggingface_hub.HfApi` (the class, so every
instance is covered, transformers' shared `hf_api()` included) with a recorder that writes each
commit into the layout of the hub cache:

    <cache_dir>/models--<org>--<name>/refs/<branch>          the commit sha of the branch head
    <cache_dir>/models--<org>--<name>/snapshots/<sha>/...    the full file tree of that commit

so a fresh process with `HF_HUB_OFFLINE=1` and `HF_HUB_CACHE=<cache_dir>` loads the pushed repo by
its id, at any recorded commit. Every call is also appended to `<cache_dir>/hub_calls.jsonl`.

Used by the tests as a `sitecustomize.py` (this file copied into a folder put first on PYTHONPATH):
at interpreter start, when `HUB_RECORDER_CACHE` is set, the recorder installs itself before the
recipe imports anything, so production code carries no test hook. Methods it does not implement
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


def _repo_dir(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def _full_id(repo_id: str) -> str:
    return repo_id if "/" in repo_id else f"{DEFAULT_USER}/{repo_id}"


def _log(cache: Path, entry: dict) -> None:
    with open(cache / "hub_calls.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, default=str) + "\n")


def _token_kind(token) -> str:
    """How the caller chose the token: None/True (the login), False, or an explicit string."""
    if token is None or token is True or token is False:
        return repr(token)
    return "explicit-string"


def _head(cache: Path, repo_id: str, revision: str | None) -> str | None:
    ref = _repo_dir(cache, repo_id) / "refs" / (revision or "main")
    if ref.is_file():
        return ref.read_text().strip()
    snap = _repo_dir(cache, repo_id) / "snapshots" / str(revision)
    return str(revision) if revision and snap.is_dir() else None


def _tree(cache: Path, repo_id: str, sha: str | None) -> list[str]:
    if sha is None:
        return []
    root = _repo_dir(cache, repo_id) / "snapshots" / sha
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def install(cache_dir: str | os.PathLike, setattr=setattr) -> None:
    """Patch `HfApi` to record into `cache_dir`. Pass pytest's `monkeypatch.setattr` to undo the
    patch after a test (in-process use); the default patches for the life of the process."""
    from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi, RepoUrl

    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    counter = [0]

    def create_repo(self, repo_id, *, token=None, private=None, exist_ok=False, repo_type=None, **kwargs):
        repo_id = _full_id(repo_id)
        with _LOCK:
            repo = _repo_dir(cache, repo_id)
            if repo.exists() and not exist_ok:
                raise FileExistsError(f"recorder: repo {repo_id} exists")
            (repo / "refs").mkdir(parents=True, exist_ok=True)
            (repo / "snapshots").mkdir(parents=True, exist_ok=True)
            _log(cache, {"call": "create_repo", "repo_id": repo_id, "private": private, "token": _token_kind(token),
                         "repo_type": repo_type})
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def list_repo_files(self, repo_id, *, revision=None, repo_type=None, token=None):
        repo_id = _full_id(repo_id)
        if not _repo_dir(cache, repo_id).exists():
            from huggingface_hub.errors import RepositoryNotFoundError

            raise RepositoryNotFoundError(f"recorder: no repo {repo_id}")
        return _tree(cache, repo_id, _head(cache, repo_id, revision))

    def create_commit(self, repo_id, operations, *, commit_message, commit_description=None, token=None,
                      repo_type=None, revision=None, create_pr=None, parent_commit=None, run_as_future=False, **kwargs):
        repo_id = _full_id(repo_id)
        operations = list(operations)
        with _LOCK:
            repo = _repo_dir(cache, repo_id)
            if not repo.exists():
                from huggingface_hub.errors import RepositoryNotFoundError

                raise RepositoryNotFoundError(f"recorder: no repo {repo_id} (create it first)")
            branch = revision or "main"
            parent = _head(cache, repo_id, branch)
            if parent_commit is not None and parent_commit != parent:
                raise RuntimeError(f"recorder: parent_commit {parent_commit} is not the head {parent}")
            counter[0] += 1
            digest = hashlib.sha1(f"{repo_id}|{parent}|{commit_message}|{counter[0]}|{os.getpid()}".encode())
            staging = repo / "snapshots" / f".staging-{digest.hexdigest()}"
            if parent is not None:
                shutil.copytree(repo / "snapshots" / parent, staging)
            else:
                staging.mkdir(parents=True)
            added, deleted = [], []
            for op in operations:
                if isinstance(op, CommitOperationAdd):
                    dest = staging / op.path_in_repo
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    src = op.path_or_fileobj
                    if isinstance(src, (str, os.PathLike)):
                        shutil.copyfile(src, dest)
                    elif isinstance(src, bytes):
                        dest.write_bytes(src)
                    else:
                        dest.write_bytes(src.read())
                    digest.update(op.path_in_repo.encode() + hashlib.sha256(dest.read_bytes()).digest())
                    added.append(op.path_in_repo)
                elif isinstance(op, CommitOperationDelete):
                    target = staging / op.path_in_repo
                    if target.is_dir():
                        shutil.rmtree(target)
                    elif target.exists():
                        target.unlink()
                    else:
                        raise FileNotFoundError(f"recorder: cannot delete {op.path_in_repo}: not in {repo_id}")
                    digest.update(b"-" + op.path_in_repo.encode())
                    deleted.append(op.path_in_repo)
                else:
                    raise NotImplementedError(f"recorder: {type(op).__name__} is not recorded")
            for d in sorted((p for p in staging.rglob("*") if p.is_dir()), reverse=True):
                if not any(d.iterdir()):
                    d.rmdir()
            sha = digest.hexdigest()
            staging.rename(repo / "snapshots" / sha)
            (repo / "refs" / branch).write_text(sha)
            _log(cache, {"call": "create_commit", "repo_id": repo_id, "sha": sha, "parent": parent, "branch": branch,
                         "message": commit_message, "added": added, "deleted": deleted, "token": _token_kind(token)})
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{sha}",
            commit_message=commit_message,
            commit_description=commit_description or "",
            oid=sha,
        )

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, commit_message=None, token=None,
                      allow_patterns=None, ignore_patterns=None, delete_patterns=None, revision=None, **kwargs):
        """What the Trainer's own push calls: recorded too, so a test sees any file it would upload."""
        from huggingface_hub.utils import filter_repo_objects

        root = Path(folder_path)
        files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        files = list(filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        prefix = (path_in_repo.strip("/") + "/") if path_in_repo else ""
        ops = [CommitOperationAdd(path_in_repo=prefix + f, path_or_fileobj=str(root / f)) for f in files]
        return create_commit(self, repo_id, ops, commit_message=commit_message or "Upload folder", token=token,
                             revision=revision)

    def create_branch(self, repo_id, *, branch, revision=None, token=None, repo_type=None, exist_ok=False):
        repo_id = _full_id(repo_id)
        with _LOCK:
            ref = _repo_dir(cache, repo_id) / "refs" / branch
            if ref.exists():
                if not exist_ok:
                    raise FileExistsError(f"recorder: branch {branch} exists")
                return
            head = _head(cache, repo_id, revision)
            if head is not None:
                ref.write_text(head)
            _log(cache, {"call": "create_branch", "repo_id": repo_id, "branch": branch, "from": head})

    for name, fn in (("create_repo", create_repo), ("list_repo_files", list_repo_files), ("create_commit", create_commit),
                     ("upload_folder", upload_folder), ("create_branch", create_branch)):
        setattr(HfApi, name, fn)


if os.environ.get(ENV):  # imported as sitecustomize in a subprocess of the tests
    install(os.environ[ENV])

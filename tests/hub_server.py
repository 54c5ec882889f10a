"""A local stand-in for the Hugging Face Hub, for tests that run the real ``huggingface_hub`` client offline.

Standard library only. It speaks the part of the Hub's HTTP API that ``huggingface_hub`` (legacy LFS path,
``HF_HUB_DISABLE_XET=1``) uses to create repos and branches, commit files, upload LFS objects, list and resolve
files, so ``create_commit``, ``upload_folder``, ``snapshot_download``, ``from_pretrained`` and the Trainer's
checkpoint pushes run unpatched against it:

    GET  /api/whoami-v2                                  POST /api/repos/create           POST /api/validate-yaml
    GET  /api/{type}s/{repo}[/revision/{rev}]            POST /api/{type}s/{repo}/preupload/{rev}
    POST /api/{type}s/{repo}/commit/{rev}                GET  /api/{type}s/{repo}/tree/{rev}[/{path}]
    POST /api/{type}s/{repo}/paths-info/{rev}            POST /api/{type}s/{repo}/branch/{branch}
    POST /[{type}s/]{repo}.git/info/lfs/objects/batch    PUT  /lfs/objects/{sha256}       POST /lfs/verify
    HEAD|GET /[{type}s/]{repo}/resolve/{rev}/{path}

Storage (under ``root``): ``blobs/{git sha1}`` for regular files, ``lfs/{sha256}`` for LFS objects (their
sha256 checked on upload), and one JSON file per repo with its branches and full commit history, each commit a
snapshot ``path -> entry``. A commit id is the sha1 of its parent, message and snapshot. Files are LFS when the
revision's ``.gitattributes`` says so (the Hub's default one is committed when a repo is created), when larger
than 10 MB, or when binary, as on the Hub.

Pull requests: a commit with ``create_pr=1`` opens ``refs/pr/N`` from the branch head and lands there. Writing
is allowed in the user's own namespace only (403 elsewhere, as on the Hub). Repo types: model, dataset, space.

Not implemented: discussions API, tags, listing refs and commits, Xet, multipart LFS, deletion of repos,
``.gitignore`` filtering, ``cardData`` in repo info (it needs a YAML parser), pagination (everything fits in one page).

    python tests/hub_server.py --root /tmp/hub --port 8123     # a server to point HF_ENDPOINT at by hand
"""

from __future__ import annotations

import base64
import datetime as _dt
import fnmatch
import hashlib
import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO_TYPES = ("model", "dataset", "space")
URL_PREFIXES = {"dataset": "datasets/", "space": "spaces/", "model": ""}
LFS_SIZE_LIMIT = 10 * 1024 * 1024
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z",
        "*.arrow",
        "*.bin",
        "*.bz2",
        "*.ckpt",
        "*.gz",
        "*.h5",
        "*.joblib",
        "*.msgpack",
        "*.model",
        "*.npy",
        "*.npz",
        "*.onnx",
        "*.ot",
        "*.parquet",
        "*.pb",
        "*.pickle",
        "*.pkl",
        "*.pt",
        "*.pth",
        "*.safetensors",
        "*.tar",
        "*.tflite",
        "*.zip",
        "*.zst",
        "*tfevents*",
    )
)


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class HubError(Exception):
    """An HTTP error answer: status, the Hub's X-Error-Code, a message."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


# ----------------------------------------------------------------------------------------------------------
# Storage


class HubStore:
    """Repos, commits and content on disk. A file entry is ``{"oid": git blob sha1, "size": n}`` plus
    ``"lfs": {"oid": sha256, "size": n, "pointerSize": p}`` for LFS files (``oid`` is then the pointer's sha1)."""

    def __init__(self, root: str | Path, user: str = "tester"):
        self.root = Path(root)
        self.user = user
        self.lock = threading.RLock()
        for sub in ("blobs", "lfs", "repos"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # --- repos

    def _repo_file(self, repo_type: str, repo_id: str) -> Path:
        return self.root / "repos" / repo_type / f"{repo_id}.json"

    def load(self, repo_id: str, repo_type: str = "model") -> dict | None:
        path = self._repo_file(repo_type, repo_id)
        return json.loads(path.read_text()) if path.exists() else None

    def save(self, repo: dict) -> None:
        path = self._repo_file(repo["type"], repo["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(repo, indent=1))
        tmp.replace(path)

    def create_repo(self, repo_id: str, repo_type: str, private: bool) -> bool:
        """Create with an initial commit holding the default .gitattributes; False if it exists."""
        with self.lock:
            if self.load(repo_id, repo_type) is not None:
                return False
            repo = {
                "id": repo_id,
                "type": repo_type,
                "private": private,
                "created": now_iso(),
                "refs": {},
                "commits": {},
            }
            attributes = DEFAULT_GITATTRIBUTES.encode()
            files = {".gitattributes": self.put_blob(attributes)}
            self._add_commit(repo, "main", None, files, "initial commit", "")
            self.save(repo)
            return True

    # --- content

    def put_blob(self, data: bytes) -> dict:
        oid = git_blob_sha1(data)
        path = self.root / "blobs" / oid
        if not path.exists():
            path.write_bytes(data)
        return {"oid": oid, "size": len(data)}

    def lfs_entry(self, sha256: str, size: int) -> dict:
        pointer = lfs_pointer(sha256, size)
        return {
            "oid": git_blob_sha1(pointer),
            "size": size,
            "lfs": {"oid": sha256, "size": size, "pointerSize": len(pointer)},
        }

    def lfs_path(self, sha256: str) -> Path:
        return self.root / "lfs" / sha256

    def has_lfs(self, sha256: str, size: int | None = None) -> bool:
        path = self.lfs_path(sha256)
        return path.exists() and (size is None or path.stat().st_size == size)

    def put_lfs(self, sha256: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != sha256:
            raise HubError(400, f"sha256 mismatch: the uploaded content does not hash to {sha256}")
        self.lfs_path(sha256).write_bytes(data)

    def content(self, entry: dict) -> bytes:
        if "lfs" in entry:
            return self.lfs_path(entry["lfs"]["oid"]).read_bytes()
        return (self.root / "blobs" / entry["oid"]).read_bytes()

    # --- revisions and commits

    @staticmethod
    def resolve(repo: dict, revision: str) -> str | None:
        """A branch name (or refs/heads/name) or a full commit id -> commit id."""
        name = revision.removeprefix("refs/heads/")
        if name in repo["refs"]:
            return repo["refs"][name]
        return revision if revision in repo["commits"] else None

    def _add_commit(
        self, repo: dict, branch: str, parent: str | None, files: dict, summary: str, description: str
    ) -> str:
        snapshot = {path: files[path] for path in sorted(files)}
        identity = {
            "parent": parent,
            "summary": summary,
            "description": description,
            "files": {p: e["oid"] for p, e in snapshot.items()},
        }
        sha = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        repo["commits"][sha] = {
            "parent": parent,
            "summary": summary,
            "description": description,
            "date": now_iso(),
            "files": snapshot,
        }
        repo["refs"][branch] = sha
        return sha

    def commit(
        self,
        repo_id: str,
        repo_type: str,
        branch: str,
        operations: list[dict],
        summary: str,
        description: str,
        parent_commit: str | None,
    ) -> str:
        """Apply ndjson commit operations on top of ``branch`` (which must exist) and return the new commit id."""
        with self.lock:
            repo = self.load(repo_id, repo_type)
            if repo is None:
                raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
            head = repo["refs"].get(branch.removeprefix("refs/heads/"))
            if head is None:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            if parent_commit is not None and parent_commit != head:
                raise HubError(
                    412, f"A commit has happened since: parent commit {parent_commit} is not the head {head}"
                )
            files = dict(repo["commits"][head]["files"])
            for op in operations:
                key, value = op["key"], op["value"]
                path = value["path"]
                if key == "file":
                    data = (
                        base64.b64decode(value["content"])
                        if value.get("encoding") == "base64"
                        else value["content"].encode()
                    )
                    files[path] = self.put_blob(data)
                elif key == "lfsFile":
                    size = value.get("size")
                    if not self.has_lfs(value["oid"], size):
                        raise HubError(422, f"LFS object {value['oid']} for {path} was not uploaded")
                    files[path] = self.lfs_entry(value["oid"], self.lfs_path(value["oid"]).stat().st_size)
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    doomed = [name for name in files if name.startswith(prefix)]
                    if not doomed:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for name in doomed:
                        del files[name]
                else:
                    raise HubError(400, f"unsupported commit operation {key!r}")
            sha = self._add_commit(repo, branch.removeprefix("refs/heads/"), head, files, summary, description)
            self.save(repo)
            return sha

    def open_pull_request(self, repo_id: str, repo_type: str, branch: str) -> int:
        """A new ref ``refs/pr/N`` at the head of ``branch``; returns N."""
        with self.lock:
            repo = self.load(repo_id, repo_type)
            head = self.resolve(repo, branch)
            if head is None:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            number = 1 + sum(ref.startswith("refs/pr/") for ref in repo["refs"])
            repo["refs"][f"refs/pr/{number}"] = head
            self.save(repo)
            return number

    def create_branch(self, repo_id: str, repo_type: str, branch: str, starting_point: str | None) -> None:
        with self.lock:
            repo = self.load(repo_id, repo_type)
            if branch in repo["refs"]:
                raise HubError(409, f"Branch {branch} already exists")
            start = self.resolve(repo, starting_point or "main")
            if start is None:
                raise HubError(404, f"Invalid rev id: {starting_point}", "RevisionNotFound")
            repo["refs"][branch] = start
            self.save(repo)

    # --- reading, for tests

    def history(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[str]:
        """Commit ids reachable from ``revision``, newest first."""
        repo = self.load(repo_id, repo_type)
        sha, shas = self.resolve(repo, revision), []
        while sha is not None:
            shas.append(sha)
            sha = repo["commits"][sha]["parent"]
        return shas

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, dict]:
        repo = self.load(repo_id, repo_type)
        return repo["commits"][self.resolve(repo, revision)]["files"]

    def read(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        return self.content(self.files(repo_id, revision, repo_type)[path])

    def is_lfs(self, repo: dict, revision: str, path: str, size: int, sample: bytes) -> bool:
        if size >= LFS_SIZE_LIMIT or b"\0" in sample:
            return True
        files = repo["commits"][revision]["files"]
        attributes = self.content(files[".gitattributes"]).decode() if ".gitattributes" in files else ""
        for line in attributes.splitlines():
            pattern, *attrs = line.split()
            if "filter=lfs" not in attrs:
                continue
            subject = path if "/" in pattern else path.rsplit("/", 1)[-1]
            if fnmatch.fnmatchcase(subject, pattern.replace("**/", "*")):
                return True
        return False


# ----------------------------------------------------------------------------------------------------------
# HTTP


class HubHandler(BaseHTTPRequestHandler):
    server: HubHTTPServer
    protocol_version = "HTTP/1.1"

    # --- plumbing

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        self.server.requests.append(f"{self.command} {self.path.split('?')[0]} -> {args[1] if len(args) > 1 else ''}")

    @property
    def store(self) -> HubStore:
        return self.server.store

    @property
    def base_url(self) -> str:
        return self.server.url

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers, then the empty line
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def json_body(self):
        body = self.read_body()
        return json.loads(body) if body else {}

    def send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: dict | None = None,
        length: int | None = None,
    ) -> None:
        """One response; ``length`` gives a HEAD answer the size of the body a GET would send. Each connection
        serves one request (simple, and safe when an error answer leaves a request body unread)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.close_connection = True
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, payload, headers: dict | None = None) -> None:
        self.send(status, json.dumps(payload).encode(), headers=headers)

    def send_error_answer(self, error: HubError) -> None:
        headers = {"X-Error-Message": error.message}
        if error.code:
            headers["X-Error-Code"] = error.code
        if error.commit:
            headers["X-Repo-Commit"] = error.commit
        self.send_json(error.status, {"error": error.message}, headers)

    def token_ok(self) -> bool:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return False
        if self.server.token is not None and auth.removeprefix("Bearer ") != self.server.token:
            raise HubError(401, "Invalid credentials in Authorization header")
        return True

    def require_token(self) -> None:
        if not self.token_ok():
            raise HubError(401, "You must be authenticated to write to the Hub")

    def repo(self, repo_type: str, repo_id: str, write: bool = False) -> dict:
        if write:
            self.require_token()
        repo = self.store.load(repo_id, repo_type)
        if repo is None or (repo["private"] and not self.token_ok()):
            raise HubError(404, f"Repository Not Found for {repo_type} {repo_id}", "RepoNotFound")
        if write:
            self.require_namespace(repo_id.split("/")[0])
        return repo

    def require_namespace(self, namespace: str) -> None:
        if namespace != self.store.user:
            raise HubError(403, f"You don't have the rights to write in the namespace {namespace!r}")

    def revision(self, repo: dict, revision: str) -> str:
        sha = self.store.resolve(repo, revision)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha

    def repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.base_url}/{URL_PREFIXES[repo_type]}{repo_id}"

    # --- dispatch

    def do_GET(self):
        self.dispatch()

    def do_HEAD(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    def do_PUT(self):
        self.dispatch()

    def dispatch(self) -> None:
        split = urllib.parse.urlsplit(self.path)
        self.query = urllib.parse.parse_qs(split.query)
        parts = [urllib.parse.unquote(part) for part in split.path.strip("/").split("/")]
        try:
            with self.store.lock:
                handled = self.route(parts)
            if not handled:
                raise HubError(404, f"no route for {self.command} {split.path}")
        except HubError as error:
            self.send_error_answer(error)
        except Exception as error:  # a server bug: answer 500 with the reason, keep serving
            self.send_json(500, {"error": f"{type(error).__name__}: {error}"})
            raise

    def route(self, parts: list[str]) -> bool:
        method = self.command
        if parts[:1] == ["api"]:
            return self.route_api(method, parts[1:])
        if parts[:2] == ["lfs", "objects"] and method == "PUT":
            return self.lfs_upload(parts[2])
        if parts[:2] == ["lfs", "verify"] and method == "POST":
            return self.lfs_verify()
        repo_type = "model"
        if parts and parts[0] in ("datasets", "spaces"):
            repo_type, parts = parts[0][:-1], parts[1:]
        if (
            len(parts) == 6
            and parts[1].endswith(".git")
            and parts[2:] == ["info", "lfs", "objects", "batch"]
            and method == "POST"
        ):
            return self.lfs_batch(repo_type, f"{parts[0]}/{parts[1][:-4]}")
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            return self.resolve_file(repo_type, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        return False

    def route_api(self, method: str, parts: list[str]) -> bool:
        if parts == ["whoami-v2"] and method == "GET":
            return self.whoami()
        if parts == ["repos", "create"] and method == "POST":
            return self.create_repo()
        if parts == ["validate-yaml"] and method == "POST":
            return self.validate_yaml()
        if len(parts) < 3 or parts[0] not in ("models", "datasets", "spaces"):
            return False
        repo_type, repo_id, rest = parts[0][:-1], f"{parts[1]}/{parts[2]}", parts[3:]
        action = (method, rest[0] if rest else "")
        if action == ("GET", "") or (action == ("GET", "revision") and len(rest) == 2):
            return self.repo_info(repo_type, repo_id, rest[1] if rest else "main")
        if action == ("POST", "preupload") and len(rest) == 2:
            return self.preupload(repo_type, repo_id, rest[1])
        if action == ("POST", "commit") and len(rest) == 2:
            return self.create_commit(repo_type, repo_id, rest[1])
        if action == ("GET", "tree") and len(rest) >= 2:
            return self.tree(repo_type, repo_id, rest[1], "/".join(rest[2:]))
        if action == ("POST", "paths-info") and len(rest) == 2:
            return self.paths_info(repo_type, repo_id, rest[1])
        if action == ("POST", "branch") and len(rest) == 2:
            return self.create_branch(repo_type, repo_id, rest[1])
        return False

    # --- account and repos

    def whoami(self) -> bool:
        if not self.token_ok():
            raise HubError(401, "Invalid credentials in Authorization header")
        user = self.store.user
        self.send_json(
            200,
            {
                "type": "user",
                "id": "0" * 24,
                "name": user,
                "fullname": user,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": "write"}},
            },
        )
        return True

    def create_repo(self) -> bool:
        self.require_token()
        payload = self.json_body()
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"invalid repo type {repo_type!r}")
        namespace = payload.get("organization") or self.store.user
        self.require_namespace(namespace)
        repo_id = f"{namespace}/{payload['name']}"
        private = payload.get("visibility", "public") != "public" or bool(payload.get("private"))
        url = self.repo_url(repo_type, repo_id)
        if not self.store.create_repo(repo_id, repo_type, private):
            self.send_json(409, {"error": "You already created this model repo", "url": url})
        else:
            self.send_json(200, {"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})
        return True

    def validate_yaml(self) -> bool:
        content = self.json_body().get("content", "")
        warnings = (
            []
            if content.startswith("---\n") and "\n---" in content[3:]
            else [{"message": "empty or missing yaml metadata in repo card"}]
        )
        self.send_json(200, {"errors": [], "warnings": warnings})
        return True

    def repo_info(self, repo_type: str, repo_id: str, revision: str) -> bool:
        repo = self.repo(repo_type, repo_id)
        sha = self.revision(repo, revision)
        commit = repo["commits"][sha]
        siblings = [
            {
                "rfilename": path,
                "size": entry["size"],
                "blobId": entry["oid"],
                **(
                    {
                        "lfs": {
                            "sha256": entry["lfs"]["oid"],
                            "size": entry["size"],
                            "pointerSize": entry["lfs"]["pointerSize"],
                        }
                    }
                    if "lfs" in entry
                    else {}
                ),
            }
            for path, entry in commit["files"].items()
        ]
        self.send_json(
            200,
            {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "author": repo_id.split("/")[0],
                "sha": sha,
                "private": repo["private"],
                "gated": False,
                "disabled": False,
                "tags": [],
                "lastModified": commit["date"],
                "createdAt": repo["created"],
                "siblings": siblings,
                "downloads": 0,
                "likes": 0,
            },
        )
        return True

    def create_branch(self, repo_type: str, repo_id: str, branch: str) -> bool:
        self.repo(repo_type, repo_id, write=True)
        self.store.create_branch(repo_id, repo_type, branch, self.json_body().get("startingPoint"))
        self.send_json(200, {})
        return True

    # --- uploading

    def preupload(self, repo_type: str, repo_id: str, revision: str) -> bool:
        repo = self.repo(repo_type, repo_id, write=True)
        sha = self.revision(repo, revision)  # a pull request starts from the branch head
        existing = repo["commits"][sha]["files"]
        answers = []
        for item in self.json_body()["files"]:
            path = item["path"]
            lfs = self.store.is_lfs(repo, sha, path, item["size"], base64.b64decode(item["sample"]))
            entry = existing.get(path)
            oid = None if entry is None else (entry["lfs"]["oid"] if "lfs" in entry else entry["oid"])
            answers.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self.send_json(200, {"files": answers, "commitOid": sha})
        return True

    def lfs_batch(self, repo_type: str, repo_id: str) -> bool:
        self.repo(repo_type, repo_id, write=True)
        payload = self.json_body()
        if payload.get("operation") != "upload":
            raise HubError(400, "only the upload operation is supported (downloads go through resolve)")
        objects = []
        for item in payload["objects"]:
            answer = {"oid": item["oid"], "size": item["size"]}
            if not self.store.has_lfs(item["oid"], item["size"]):
                answer["authenticated"] = True
                answer["actions"] = {
                    "upload": {"href": f"{self.base_url}/lfs/objects/{item['oid']}"},
                    "verify": {"href": f"{self.base_url}/lfs/verify"},
                }
            objects.append(answer)
        self.send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(), "application/vnd.git-lfs+json")
        return True

    def lfs_upload(self, sha256: str) -> bool:
        self.store.put_lfs(sha256, self.read_body())
        self.server.lfs_uploads.append(sha256)
        self.send(200)
        return True

    def lfs_verify(self) -> bool:
        payload = self.json_body()
        if not self.store.has_lfs(payload["oid"], payload["size"]):
            raise HubError(404, f"LFS object {payload['oid']} not found")
        self.send_json(200, {})
        return True

    def create_commit(self, repo_type: str, repo_id: str, revision: str) -> bool:
        self.repo(repo_type, repo_id, write=True)
        lines = [json.loads(line) for line in self.read_body().splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            raise HubError(400, "a commit starts with a header line")
        header, pr_url = lines[0]["value"], None
        if self.query.get("create_pr", ["0"])[0].lower() in ("1", "true"):
            number = self.store.open_pull_request(repo_id, repo_type, revision)
            revision, pr_url = f"refs/pr/{number}", f"{self.repo_url(repo_type, repo_id)}/discussions/{number}"
        sha = self.store.commit(
            repo_id,
            repo_type,
            revision,
            lines[1:],
            header["summary"],
            header.get("description", ""),
            header.get("parentCommit"),
        )
        self.send_json(
            200,
            {
                "success": True,
                "commitOid": sha,
                "commitUrl": f"{self.repo_url(repo_type, repo_id)}/commit/{sha}",
                "pullRequestUrl": pr_url,
                "hookOutput": "",
            },
        )
        return True

    # --- listing and downloading

    def entry_json(self, path: str, entry: dict) -> dict:
        answer = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
        if "lfs" in entry:
            answer["lfs"] = dict(entry["lfs"])
        return answer

    @staticmethod
    def folder_json(path: str, files: dict) -> dict:
        inside = {name: entry["oid"] for name, entry in files.items() if name.startswith(path + "/")}
        return {
            "type": "directory",
            "oid": hashlib.sha1(json.dumps(inside, sort_keys=True).encode()).hexdigest(),
            "size": 0,
            "path": path,
        }

    @staticmethod
    def folders_of(files: dict) -> set[str]:
        return {"/".join(name.split("/")[:depth]) for name in files for depth in range(1, name.count("/") + 1)}

    def tree(self, repo_type: str, repo_id: str, revision: str, path: str) -> bool:
        repo = self.repo(repo_type, repo_id)
        sha = self.revision(repo, revision)
        files = repo["commits"][sha]["files"]
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = f"{path}/" if path else ""
        if path and path not in self.folders_of(files):
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound", sha)
        items = []
        for folder in sorted(self.folders_of(files)):
            if folder.startswith(prefix) and (recursive or "/" not in folder[len(prefix) :]):
                items.append(self.folder_json(folder, files))
        for name, entry in files.items():
            if name.startswith(prefix) and (recursive or "/" not in name[len(prefix) :]):
                items.append(self.entry_json(name, entry))
        self.send_json(200, items)
        return True

    def paths_info(self, repo_type: str, repo_id: str, revision: str) -> bool:
        repo = self.repo(repo_type, repo_id)
        sha = self.revision(repo, revision)
        files = repo["commits"][sha]["files"]
        body = self.read_body().decode()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(body).get("paths", [])
        else:
            paths = urllib.parse.parse_qs(body).get("paths", [])
        folders, items = self.folders_of(files), []
        for path in paths:
            path = path.strip("/")
            if path in files:
                items.append(self.entry_json(path, files[path]))
            elif path in folders:
                items.append(self.folder_json(path, files))
        self.send_json(200, items)
        return True

    def resolve_file(self, repo_type: str, repo_id: str, revision: str, path: str) -> bool:
        repo = self.repo(repo_type, repo_id)
        sha = self.revision(repo, revision)
        entry = repo["commits"][sha]["files"].get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path} at {revision}", "EntryNotFound", sha)
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if "lfs" in entry:
            headers.update(
                {
                    "ETag": f'"{entry["lfs"]["oid"]}"',
                    "X-Linked-Etag": f'"{entry["lfs"]["oid"]}"',
                    "X-Linked-Size": str(entry["size"]),
                }
            )
        else:
            headers["ETag"] = f'"{entry["oid"]}"'
        if self.command == "HEAD":
            self.send(200, b"", "application/octet-stream", headers, length=entry["size"])
            return True
        data, status = self.store.content(entry), 200
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if ranged:
            start, end = int(ranged[1]), int(ranged[2]) if ranged[2] else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            status, data = 206, data[start : end + 1]
        self.send(status, data, "application/octet-stream", headers)
        return True


class HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, store: HubStore, host: str, port: int, token: str | None):
        super().__init__((host, port), HubHandler)
        self.store, self.token = store, token
        self.requests: list[str] = []  # "METHOD /path -> status", for debugging failed tests
        self.lfs_uploads: list[str] = []  # sha256 of every LFS object uploaded

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class LocalHub:
    """A Hub server on 127.0.0.1 in a background thread::

    with LocalHub(tmp_path / "hub", token="hf_test") as hub:
        env = {"HF_ENDPOINT": hub.url, ...}
    """

    def __init__(self, root: str | Path, token: str | None = None, user: str = "tester", port: int = 0):
        self.store = HubStore(root, user=user)
        self.server = HubHTTPServer(self.store, "127.0.0.1", port, token)
        self.thread = threading.Thread(target=self.server.serve_forever, name="local-hub", daemon=True)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> LocalHub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="storage directory")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", help="the only token accepted (default: any)")
    cli = parser.parse_args()
    hub = LocalHub(cli.root, token=cli.token, port=cli.port)
    print(f"HF_ENDPOINT={hub.url} HF_HUB_DISABLE_XET=1", flush=True)
    hub.server.serve_forever()

"""Every MLLM answer on disk, so that a killed THI or RDA run resumes without asking again; batched asking.

The cache is an append-only JSON-lines file, one answer a line, written with one write() per line and
fsync'd per batch: a kill mid-write can only leave a partial last line, which the next open cuts off.
An answer is keyed by the model, the question and the SHA-256 of the image file's bytes, not its path: a path
that gets new pixels is asked again, and the same pixels under another path reuse the answer.
Under --shard each process appends to a file of its own (mllm/shards.py); every cache also reads the shards'
files beside it, which is how a run without --shard merges them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass

from utils.images import ImageDecodeError
from utils.progress import progress
from .shards import Shard, shard_cache_files

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    """An answer that could not be had (unreadable image, engine error): that query keeps its base ranking."""
    reason: str


class AnswerCache:
    def __init__(self, path: str, shard: Shard | None = None):
        self.path = path if shard is None else shard.own_file(path)   # the file this process appends to
        self.answers: dict[str, object] = {}
        self.from_cache = self.asked = 0   # distinct requests answered by this file / put to the MLLM, per ask()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        for other in [path] + shard_cache_files(path):
            if other != self.path and os.path.exists(other):
                self._load(other, writable=False)
        if os.path.exists(self.path):
            self._load(self.path, writable=True)

    def _load(self, path: str, writable: bool) -> None:
        with open(path, "rb") as f:
            data = f.read()
        complete = data.rfind(b"\n") + 1
        if complete < len(data) and writable:
            # the partial line of a killed write: cut it so that the next append starts on a fresh line
            with open(path, "r+b") as f:
                f.truncate(complete)
            logger.info("answer cache %s: dropped an unfinished last line", path)
        bad = by_path = 0
        for line in data[:complete].splitlines():
            try:
                entry = json.loads(line)
                if entry.get("image") is not None and "content" not in entry:
                    by_path += 1            # its key can never be asked again: not kept
                    continue
                self.answers[entry["key"]] = entry["value"]
            except (ValueError, KeyError, TypeError, AttributeError):
                bad += 1
        if bad:
            logger.warning("answer cache %s: skipped %d unreadable lines", path, bad)
        if by_path:
            logger.warning("answer cache %s: %d answers about images were keyed by the image's path (a cache "
                           "written before answers were keyed by the image's content), not by its pixels: not used, "
                           "asked again", path, by_path)

    def summary(self) -> str:
        """For the log: how many answers this run took from the cache and how many it asked."""
        return (f"MLLM answers: {self.from_cache} from the cache ({self.path}), {self.asked} asked"
                + (" -- every answer was cached, no model was loaded" if self.from_cache and not self.asked else ""))

    @staticmethod
    def key(model_id: str, kind: str, request, content: str | None, **params) -> str:
        """content: image_content(request.image).  (A text-only request's key is what it was when the path stood
        where the content is: those answers stay valid.)"""
        fields = [model_id, kind, content, request.system, request.prompt, sorted(params.items())]
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()

    def __contains__(self, key: str) -> bool:
        return key in self.answers

    def __getitem__(self, key: str):
        return self.answers[key]

    def add(self, entries: list[tuple[str, object, str | None, str | None]]) -> None:
        """Append (key, value, image, content) entries; the image path is kept only to make the file readable by
        eye, its content hash to tell these lines from the path-keyed ones of older caches."""
        if not entries:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            for key, value, image, content in entries:
                f.write(json.dumps({"key": key, "value": value, "image": image, "content": content}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for key, value, _, _ in entries:
            self.answers[key] = value


def image_content(path: str | None) -> str | None:
    """What an answer about an image is keyed by: the SHA-256 of the file's bytes (None: no image).  A file that
    cannot be read gets its path instead; asking about it fails, and a failure is never cached."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return f"unreadable:{os.path.abspath(path)}"


def ask(backend, cache: AnswerCache, kind: str, requests: list, batch_size: int = 8, **params) -> list:
    """Answers of backend.<kind> ('yes_probability' or 'generate') for requests, in order; Failure for a
    request that failed.  Cached answers are not asked again; new ones are cached as each batch finishes.

    A batch that raises is asked again one request at a time, so one bad image costs only its own query.  If
    every request failed and not all for unreadable images, the cause is not the data: the error is raised.
    A model that cannot load (MLLMLoadError, a SystemExit) is not a request's failure: it passes through.
    """
    contents = {image: image_content(image) for image in {r.image for r in requests}}   # read once per call
    keys = [cache.key(backend.model_id, kind, r, contents[r.image], **params) for r in requests]
    todo, seen = [], set()   # indices to ask, each distinct request once
    for i, k in enumerate(keys):
        if k not in cache and k not in seen:
            seen.add(k)
            todo.append(i)
    cache.from_cache += len(set(keys)) - len(todo)
    cache.asked += len(todo)
    failures: dict[str, Failure] = {}
    errors: list[BaseException] = []
    call = getattr(backend, kind)
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    for batch in progress(batches, enabled=bool(batches), desc=f"MLLM {kind}", unit="batch"):
        try:
            values = call([requests[i] for i in batch], **params)
            done = list(zip(batch, values))
        except Exception:  # noqa: BLE001 -- isolate the request(s) at fault by asking one at a time
            done = []
            for i in batch:
                try:
                    done.append((i, call([requests[i]], **params)[0]))
                except Exception as e:  # noqa: BLE001 -- recorded per query; see the all-failed check below
                    errors.append(e)
                    failures[keys[i]] = Failure(f"{type(e).__name__}: {e}")
                    logger.warning("MLLM %s failed for %s: %s", kind, requests[i].image or "a text request", e)
        cache.add([(keys[i], value, requests[i].image, contents[requests[i].image]) for i, value in done])
    if todo and len(failures) == len(todo) and not all(isinstance(e, ImageDecodeError) for e in errors):
        raise RuntimeError(f"every MLLM {kind} request failed; first error: {failures[keys[todo[0]]].reason}") \
            from next(e for e in errors if not isinstance(e, ImageDecodeError))
    return [cache[k] if k in cache else failures[k] for k in keys]

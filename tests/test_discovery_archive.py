"""A deployed source zip is checked before it is extracted: real zip files, each refusal."""

from __future__ import annotations

import random
import stat
import zipfile
from pathlib import Path

import pytest

from cf2run.discovery.archive import MAX_UNZIPPED_BYTES, MAX_ZIPPED_BYTES, Limits, extract_zip
from cf2run.errors import SourceError


def make_zip(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return path


def test_a_good_zip_is_extracted_with_its_folders_and_inner_links(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "s.zip", {"main.py": b"def hello(r):\n    return 'hi'\n",
                                            "lib/util.py": b"X = 1\n"}, {"util.py": "lib/util.py"})
    written = extract_zip(archive, tmp_path / "out")
    assert (tmp_path / "out" / "main.py").read_bytes().startswith(b"def hello")
    assert (tmp_path / "out" / "util.py").read_text() == "X = 1\n"  # the link, inside the folder
    assert written == len(b"def hello(r):\n    return 'hi'\n") + len(b"X = 1\n")


@pytest.mark.parametrize("entry", ["../evil.py", "lib/../../evil.py", "/etc/evil", "..\\evil.py", "C:/evil"])
def test_an_entry_outside_the_folder_is_refused_and_nothing_is_written(tmp_path: Path, entry: str) -> None:
    archive = make_zip(tmp_path / "s.zip", {"main.py": b"ok", entry: b"boom"})
    with pytest.raises(SourceError, match="points outside the function's folder"):
        extract_zip(archive, tmp_path / "out" / "fn")
    assert not (tmp_path / "out" / "fn").exists()
    assert not (tmp_path / "evil.py").exists() and not (tmp_path / "out" / "evil.py").exists()


@pytest.mark.parametrize("target", ["../../etc/passwd", "/etc/passwd", "sub/../../../x", "../.."])
def test_a_symlink_out_of_the_folder_is_refused(tmp_path: Path, target: str) -> None:
    archive = make_zip(tmp_path / "s.zip", {"main.py": b"ok"}, {"lib/config": target})
    with pytest.raises(SourceError, match="is a symlink to"):
        extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_source_above_the_unzipped_limit_is_refused_before_extracting(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "s.zip", {"big.bin": b"\0" * 5000, "main.py": b"ok"})
    with pytest.raises(SourceError, match=r"5[0-9]{3} bytes unzipped, above Cloud Functions' "):
        extract_zip(archive, tmp_path / "out", Limits(unzipped=4096))
    assert not (tmp_path / "out").exists()


def test_a_source_above_the_zipped_limit_is_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "s.zip", {"main.py": random.Random(0).randbytes(4000)})
    with pytest.raises(SourceError, match="zipped, above Cloud Functions' "):
        extract_zip(archive, tmp_path / "out", Limits(zipped=1000))


def test_an_entry_bigger_than_its_header_says_is_stopped_while_writing(tmp_path: Path) -> None:
    """A header that understates the size passes the first check; the bytes written are counted."""
    archive = make_zip(tmp_path / "s.zip", {"main.py": b"a" * 3000})
    data = bytearray(archive.read_bytes())
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = (10).to_bytes(4, "little")  # uncompressed size: 10
    archive.write_bytes(bytes(data))
    with pytest.raises(SourceError):
        extract_zip(archive, tmp_path / "out", Limits(unzipped=2000))
    assert not (tmp_path / "out").exists()


def test_a_corrupt_or_non_zip_file_is_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "s.zip", {"main.py": b"print('hello world')\n" * 50})
    data = bytearray(archive.read_bytes())
    data[40] ^= 0xFF  # inside the first entry's compressed data
    archive.write_bytes(bytes(data))
    with pytest.raises(SourceError, match=r"corrupt|not a valid zip"):
        extract_zip(archive, tmp_path / "out")
    (tmp_path / "page.zip").write_text("<html>Access denied</html>")
    with pytest.raises(SourceError, match="not a valid zip archive"):
        extract_zip(tmp_path / "page.zip", tmp_path / "out2")


def test_the_limits_are_cloud_functions_own() -> None:
    """100MB zipped, 500MB unzipped (https://cloud.google.com/functions/quotas-1st-gen)."""
    assert (MAX_ZIPPED_BYTES, MAX_UNZIPPED_BYTES) == (100 * 2**20, 500 * 2**20)
    assert Limits() == Limits(zipped=MAX_ZIPPED_BYTES, unzipped=MAX_UNZIPPED_BYTES)

"""The set-up's trust in Debian's archive (``scripts/debian-source.sh``), on local files.

``scripts/setup.sh`` builds TimescaleDB as root from a source package fetched over plain HTTP,
so every byte it uses must trace back to the suite's ``InRelease`` signed by Debian's archive
keyring. These tests run the very functions the set-up calls, with ``gpgv`` and the system's
``debian-archive-keyring`` (``scripts/setup.sh --test`` installs both), on a genuine signed
fixture and on tampered copies of it; nothing is downloaded and nothing is built.

The fixture (``fixtures/debian/``) is ``dists/trixie-updates/InRelease`` of deb.debian.org as
published on 2026-11-28 and the ``main/source/Sources.xz`` it lists (1,400 bytes; the same kind
of index the set-up reads for ``trixie``, small enough to keep). Its ``Valid-Until`` has passed
by now, so the tests hold the clock at its ``Date`` (``DEBSRC_NOW``), and one test moves it past.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "scripts" / "debian-source.sh"
FIXTURES = Path(__file__).parent / "fixtures" / "debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
SUITE = "trixie-updates"
INDEX = "main/source/Sources.xz"
#: the fixture's Date: and Valid-Until: lines
SIGNED_AT = datetime(2026, 11, 28, 14, 9, 31, tzinfo=UTC).timestamp()
VALID_UNTIL = datetime(2026, 12, 5, 14, 9, 31, tzinfo=UTC).timestamp()


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    missing = [name for name in ("bash", "gpgv", "sha256sum") if shutil.which(name) is None]
    assert not missing, f"{missing} not found: run scripts/setup.sh --test"
    assert KEYRING.is_file(), f"{KEYRING} not found: run scripts/setup.sh --test"


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """Copies of the genuine InRelease and Sources.xz that a test may tamper with."""
    inrelease = tmp_path / "InRelease"
    sources = tmp_path / "Sources.xz"
    shutil.copyfile(FIXTURES / "trixie-updates.InRelease", inrelease)
    shutil.copyfile(FIXTURES / "trixie-updates.main.source.Sources.xz", sources)
    return inrelease, sources


def verify(
    inrelease: Path,
    sources: Path,
    *,
    suite: str = SUITE,
    keyring: Path = KEYRING,
    now: float = SIGNED_AT + 3600,
) -> subprocess.CompletedProcess[str]:
    """Run ``debsrc_verify_index`` as the set-up does; its exit status and stderr."""
    return subprocess.run(
        [
            "bash",
            "-c",
            '. "$1" && shift && debsrc_verify_index "$@"',
            "verify",
            str(LIBRARY),
            str(inrelease),
            str(keyring),
            suite,
            INDEX,
            str(sources),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DEBSRC_NOW": str(int(now))},
        check=False,
    )


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_the_genuine_inrelease_and_sources_are_accepted(files: tuple[Path, Path]) -> None:
    result = verify(*files)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_one_byte_changed_in_the_signed_inrelease_is_refused(files: tuple[Path, Path]) -> None:
    inrelease, sources = files
    text = inrelease.read_bytes()
    # the first hex digit of the SHA-256 listed for main/source/Sources.xz
    end = text.index(b" main/source/Sources.xz\n", text.index(b"\nSHA256:"))
    flip_byte(inrelease, text.rindex(b"\n", 0, end) + 2)
    result = verify(inrelease, sources)
    assert result.returncode == 1
    assert "no good signature" in result.stderr and "BAD signature" in result.stderr


def test_one_byte_changed_in_sources_is_refused(files: tuple[Path, Path]) -> None:
    inrelease, sources = files
    flip_byte(sources, 700)
    result = verify(inrelease, sources)
    assert result.returncode == 1
    assert "sha256" in result.stderr and "the signed release says" in result.stderr


def test_a_hash_added_outside_the_signed_text_is_not_believed(files: tuple[Path, Path]) -> None:
    """Text after the signature (here a SHA256 list matching a tampered index) is refused."""
    inrelease, sources = files
    flip_byte(sources, 700)
    forged = subprocess.run(
        ["sha256sum", str(sources)], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    with inrelease.open("a") as f:
        f.write(f"SHA256:\n {forged}     1400 {INDEX}\n")
    result = verify(inrelease, sources)
    assert result.returncode == 1
    assert "not one clearsigned message" in result.stderr


def test_a_second_signed_message_appended_is_refused(files: tuple[Path, Path]) -> None:
    """A genuine signed message appended (e.g. an older release's) must not add its lists."""
    inrelease, sources = files
    genuine = inrelease.read_bytes()
    inrelease.write_bytes(genuine + genuine)
    result = verify(inrelease, sources)
    assert result.returncode == 1
    assert "not one clearsigned message" in result.stderr


def test_an_inrelease_of_another_suite_is_refused(files: tuple[Path, Path]) -> None:
    """A genuine, signed InRelease of another suite (an older release, say) is a replay."""
    result = verify(*files, suite="trixie")
    assert result.returncode == 1
    assert "not trixie" in result.stderr


def test_an_inrelease_past_its_valid_until_is_refused(files: tuple[Path, Path]) -> None:
    result = verify(*files, now=VALID_UNTIL + 60)
    assert result.returncode == 1
    assert "expired" in result.stderr


def test_a_signature_by_a_key_outside_the_keyring_is_refused(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    empty = tmp_path / "empty.gpg"
    empty.write_bytes(b"")
    result = verify(*files, keyring=empty)
    assert result.returncode == 1
    assert "no good signature" in result.stderr


def test_an_unsigned_copy_of_the_release_is_refused(files: tuple[Path, Path]) -> None:
    inrelease, sources = files
    text = inrelease.read_text()
    body = text[text.index("Origin:") : text.index("-----BEGIN PGP SIGNATURE-----")]
    inrelease.write_text(body)
    result = verify(inrelease, sources)
    assert result.returncode == 1
    assert "not one clearsigned message" in result.stderr

"""Versions as operators write them: ``format_version`` and ``parse_version`` agree."""

from __future__ import annotations

import pytest

from runtime.core.versions import format_version, make_version, parse_version

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("text", "version"),
    [("3.17", make_version(3, 17)), ("0.0", 0), (" 12.5 ", make_version(12, 5)), ("42", 42)],
)
def test_parse_reads_what_format_writes(text: str, version: int) -> None:
    assert parse_version(text) == version
    assert parse_version(format_version(version)) == version


@pytest.mark.parametrize("text", ["", "x", "3.", "-1", "-2.3", "1.2.3", "3.-4"])
def test_parse_refuses_what_is_no_version(text: str) -> None:
    with pytest.raises(ValueError, match="not a version"):
        parse_version(text)

"""pmd.units: sizes with K/M/G suffixes."""
import pytest

from pmd.units import parse_size


@pytest.mark.parametrize("text,want", [("4096", 4096), ("4K", 4 << 10), ("256M", 256 << 20), (" 2g ", 2 << 30)])
def test_parse_size(text, want):
    assert parse_size(text) == want


@pytest.mark.parametrize("text", ["", "M", "12X", "1.5G", "-4K"])
def test_parse_size_refuses_what_is_not_a_size(text):
    with pytest.raises(ValueError, match="not a number"):
        parse_size(text)

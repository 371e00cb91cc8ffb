"""Write the README's server settings table from the settings model (src/distren/server/config.py).

    python scripts/settings_table.py          # print the table
    python scripts/settings_table.py --write  # replace the table in README.md

tests/test_settings.py fails while the README's table differs from the model's.
"""

from __future__ import annotations

import sys
from pathlib import Path

from distren.server.settings import markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN = "<!-- settings table: made by scripts/settings_table.py from src/distren/server/config.py -->\n"
END = "<!-- end of the settings table -->\n"


def table_span(text: str) -> tuple[int, int]:
    """Where the table is in the README's text: between the markers."""
    return text.index(BEGIN) + len(BEGIN), text.index(END)


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        text = README.read_text()
        start, end = table_span(text)
        README.write_text(text[:start] + markdown_table() + text[end:])
        return 0
    sys.stdout.write(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

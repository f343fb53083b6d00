from pathlib import Path

import pytest

TABLES = Path(__file__).parent / "data" / "spdy_timings"


@pytest.fixture(scope="session")
def shipped_tables():
    from engine.timing.table import load_table

    return {path.stem: load_table(path) for path in sorted(TABLES.glob("*.txt"))}

"""Illustrator command line: `illustrator serve`, `illustrator process`, `illustrator sessions`."""
def main() -> None:
    raise SystemExit("not yet")

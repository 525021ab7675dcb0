"""stub: filled in by the owner."""


def register(subparsers) -> None:
    pass

"""Placeholder until this command lands; registers nothing."""


def register(app) -> None:
    return None

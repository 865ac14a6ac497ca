"""`oca-fill`: the nightly fill agent's command line."""

from oca.stub import not_yet


def main() -> None:
    not_yet("oca-fill", "Nightly fill agent: pull the most popular titles into this appliance's stores")

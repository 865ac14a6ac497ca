"""`oca-steering`: the steering service's command line."""

from oca.stub import not_yet


def main() -> None:
    not_yet("oca-steering", "Steering service: rank appliances for a client and a content id")

"""`oca-server`: the appliance's HTTP server (placeholder until the server lands)."""

from oca.stub import not_yet


def main() -> None:
    not_yet("oca-server", "Serve the appliance's content over HTTP with sendfile")

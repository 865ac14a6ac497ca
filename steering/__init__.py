"""steering: maps a client's prefix to the nearest healthy appliance holding a file."""

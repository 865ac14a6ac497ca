"""fill: the nightly fill agent (popularity-driven, windowed, rate-capped)."""

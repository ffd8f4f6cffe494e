"""Allow `python -m tap_smartcar_connections`."""

from tap_smartcar_connections.tap import main

main()

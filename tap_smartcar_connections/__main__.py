"""Allow `python -m tap_smartcar_connections`."""

from tap_smartcar_connections.cli import main

main()

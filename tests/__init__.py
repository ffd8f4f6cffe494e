"""Tests for tap-smartcar-connections."""

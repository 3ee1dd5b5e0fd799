"""Emulators of meters, camera and platform for the tests and `gateway demo`; never used by the daemon's real paths."""

"""The pure message contract between gateway and platform: topics, payload builders and their JSON Schemas
(``schemas/``), image chunking, and the checks on downlink messages.

Below the store (which writes a record and its message in one transaction) and above records/errors only:
no I/O, no SQLite, no MQTT. ``forward/`` sends what is built here; ``emulate/platform.py`` reads it back.
"""

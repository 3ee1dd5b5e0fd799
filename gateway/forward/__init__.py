"""Outbox to platform over MQTT; never imports meters/ or retina/."""

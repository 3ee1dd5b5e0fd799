"""The envelope of an up message: which message it is, who sends it and when.

Every document the gateway sends carries these (the native documents as their first fields, the FHIR forms as an
identifier and the performer), so the builders of :mod:`gateway.wire.contract` and :mod:`gateway.wire.fhir` take
one :class:`Envelope` instead of four keywords each.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Envelope:
    """Which up message this is (its id: the platform deduplicates and acknowledges by it), the clinic and gateway
    that send it, and when the gateway built it."""

    message_id: str
    site_id: str
    gateway_id: str
    created_at: datetime

    @property
    def sender(self) -> str:
        """``site/gateway``: the FHIR forms' performer."""
        return f"{self.site_id}/{self.gateway_id}"

    def document(self, schema_id: str) -> dict[str, Any]:
        """The first fields of a native document of ``schema_id``."""
        return {
            "schema": schema_id,
            "message_id": self.message_id,
            "site_id": self.site_id,
            "gateway_id": self.gateway_id,
            "created_at": self.created_at.isoformat(timespec="milliseconds"),
        }

"""The base of the service's domain errors: what went wrong, as a machine code and a message.

The model layer (:mod:`service.store`, :mod:`service.backends`) raises them without knowing
about HTTP; :mod:`service.errors` maps each to its status code.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["ServiceError"]


class ServiceError(Exception):
    """A failure of the service's own domain, answered to the client as ``code`` + message.

    Subclasses set :attr:`code`; the message is the exception's single argument.
    """

    code: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

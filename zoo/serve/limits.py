"""What a request may ask of the server, and the error a request gets when it asks too much."""
from __future__ import annotations

from dataclasses import asdict, dataclass


class RequestError(ValueError):
    """A request the server refuses: `status` is the HTTP code (4xx), the message names the problem and the fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Limits:
    """Every limit is configurable on the command line (`zoo serve --help`)."""

    max_request_bytes: int = 4 * 1024 * 1024  # whole HTTP body
    max_image_pixels: int = 4096 * 4096  # width x height of one decoded image, read from its header before decoding
    max_text_tokens: int | None = None  # None: the model's own position limit (at most 512)
    max_items: int = 32  # inputs in one request ("inputs": [...])
    max_new_tokens: int = 64  # generation length
    max_beams: int = 4
    max_labels: int = 64  # candidate labels of zero-shot classification
    max_top_k: int = 100  # classes returned per input

    def __post_init__(self):
        for name, value in asdict(self).items():
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"limit {name} must be a positive integer, got {value!r}")

    def as_dict(self) -> dict:
        return asdict(self)

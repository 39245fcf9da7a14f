"""Every error dronedepth raises on purpose, in one hierarchy.

    DroneDepthError
    ├── ConfigError            bad arguments, files or values given by the user
    ├── ExportError            a model could not be loaded, exported or verified
    │   └── CheckpointError    a checkpoint does not match the architecture asked for
    ├── ServingError           the embedded Triton server could not start or stopped
    ├── InferenceError         a depth request failed (Triton down, timeout, bad reply)
    │   └── InferenceUnavailable   the server is unreachable or overloaded: try later
    │       ├── InferenceTimeout       one request took longer than the timeout
    │       └── InferenceOverloaded    the server is up but rejected the request (queue full)
    ├── ProtocolError          a wire message is malformed or has bad values
    ├── GatewayFull            the gateway serves its maximum of drones, or is shutting down
    └── GatewayBusy            an offer for the same drone id is being answered right now

Lower-level errors (grpc, tritonclient, onnxruntime, aiortc) are converted at
the boundary with ``raise ... from exc`` so callers handle one family. Each
message says what was wrong and, where it can, what to do about it.
"""


class DroneDepthError(Exception):
    """Base of every dronedepth error."""


class ConfigError(DroneDepthError):
    """Bad arguments, files or values given by the user."""


class ExportError(DroneDepthError):
    """A model could not be loaded, exported or verified."""


class CheckpointError(ExportError):
    """A checkpoint does not match the architecture asked for."""


class ServingError(DroneDepthError):
    """The embedded Triton server could not start, or stopped."""


class InferenceError(DroneDepthError):
    """A depth request failed."""


class InferenceUnavailable(InferenceError):
    """The inference server is unreachable or overloaded; retrying later may work."""


class InferenceTimeout(InferenceUnavailable):
    """A depth request took longer than the configured timeout (server slow or overloaded)."""


class InferenceOverloaded(InferenceUnavailable):
    """The server is up but rejected the request: its queue is full or the request waited too long in it."""


class ProtocolError(DroneDepthError):
    """A wire message is malformed or carries bad values.

    ``code`` is the machine-readable code sent back to the peer in an ``error`` message.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class GatewayFull(DroneDepthError):
    """The gateway already serves its maximum number of drones, or is shutting down (HTTP 503)."""


class GatewayBusy(DroneDepthError):
    """An offer for the same drone id is being answered right now (HTTP 409)."""

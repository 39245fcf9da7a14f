"""dronedepth: live metric 3D perception from a drone's single camera.

This package holds what every part of the pipeline shares and what stays light
enough for an onboard computer: the wire protocol, the model contract, the
exception hierarchy and the ``dronedepth`` command line.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

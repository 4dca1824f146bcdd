"""Azure and local implementations of the ports in ``shared_code.ports``."""

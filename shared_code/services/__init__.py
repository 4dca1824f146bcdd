"""Use cases: each orchestrates the ports in ``shared_code.ports`` for one job."""

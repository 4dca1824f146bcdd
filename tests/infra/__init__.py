"""Offline checks of infra/: Bicep syntax, contracts with the code, checkov."""

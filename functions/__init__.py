"""Blueprints with the app's triggers. Each trigger parses, calls one use case, maps."""

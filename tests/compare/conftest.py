"""Comparisons against timm/torchvision. They need the ``compare`` extra:
``pip install -e '.[dev,compare]'`` (torch, torchvision, timm); CI installs it."""

import pytest

torch = pytest.importorskip("torch", reason="needs the 'compare' extra (torch + timm)")
timm = pytest.importorskip("timm", reason="needs the 'compare' extra (torch + timm)")

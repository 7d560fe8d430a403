"""Datasets, splits and transforms."""

from .packaged import foolbox_imagenet

__all__ = ["foolbox_imagenet"]

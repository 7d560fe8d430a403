"""Backbones: pretrained classifiers with a data config and named activation sites."""

from .backbone import Backbone
from .loading import OFFLINE, WeightsUnavailableError, create_backbone
from .sites import Site, SitePoint

__all__ = ["OFFLINE", "Backbone", "Site", "SitePoint", "WeightsUnavailableError", "create_backbone"]

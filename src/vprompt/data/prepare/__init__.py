"""Making datasets in the layouts vprompt reads: ``vprompt data prepare vtab1k`` builds VTAB-1k from TFDS.

``vtab1k`` holds the official task definitions as data (no TensorFlow), ``tfds_reader`` the only TensorFlow
imports, ``convert`` the resumable, atomic, verified writing of the processed layout.
"""

from .convert import Outcome, prepare_vtab1k
from .vtab1k import VTAB1K, VtabTask

__all__ = ["VTAB1K", "Outcome", "VtabTask", "prepare_vtab1k"]

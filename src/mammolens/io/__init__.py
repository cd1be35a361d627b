"""Reading mammograms from every format users have (DICOM, PGM, PNG, TIFF, JPEG, NPY).

``read_image`` returns a float32 [0, 1] 2-D array plus header facts (``ImageMeta``); every
problem with a file is an ``ImageReadError`` that names it, raised before large allocations.
"""

from mammolens.io.guards import DEFAULT_MAX_PIXELS
from mammolens.io.image import Image, ImageMeta
from mammolens.io.reader import SUPPORTED_SUFFIXES, read_image, read_meta

__all__ = ["DEFAULT_MAX_PIXELS", "SUPPORTED_SUFFIXES", "Image", "ImageMeta", "read_image", "read_meta"]

"""The DICOM node: mammography studies from a PACS in, DICOM results (TID 1500 SR, parametric-map
and overlay heatmaps) back into the same study; see docs/pacs.md."""

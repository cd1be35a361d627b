"""DICOM files written on the fly, with patient identifiers set: they must never come back out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import RLELossless, SecondaryCaptureImageStorage, generate_uid

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "MRN-0042-SECRET"


def dicom_dataset(**tags) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19600101"
    ds.AccessionNumber = "ACC-777"
    ds.InstitutionName = "Saint Nowhere Hospital"
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def write_dicom(path: Path, arr: np.ndarray, *, bits: int | None = None, photometric="MONOCHROME2", rle=False, **tags) -> Path:
    ds = dicom_dataset(**tags)
    ds.set_pixel_data(arr, photometric, bits or arr.dtype.itemsize * 8)
    if rle:
        ds.compress(RLELossless, arr)
    ds.save_as(path, enforce_file_format=True)
    return path

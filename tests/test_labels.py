import pytest

from xray_assets.core import labels
from xray_assets.core.classes import NIH_CLASSES


def test_sample_nih_files_read(sample_dir):
    df = labels.read_nih_labels(sample_dir / "nih" / "Data_Entry_2017.csv")
    assert {"image_id", "patient_id", "findings", "age", "sex", "view", "follow_up"} <= set(
        df.columns
    )
    assert df["findings"].map(lambda f: f == ["No Finding"]).any()
    boxes, q = labels.read_nih_boxes_checked(sample_dir / "nih" / "BBox_List_2017.csv")
    assert q.empty and set(boxes["label"]) <= set(NIH_CLASSES)
    assert (boxes["x_max"] > boxes["x_min"]).all() and (boxes["y_max"] <= 1024).all()


def test_bad_box_row_is_quarantined_with_file_and_row(tmp_path):
    f = tmp_path / "BBox_List_2017.csv"
    f.write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "a.png,Mass,1,2,3,4\n"
        "b.png,Cardiomegaly|Emphysema,1,2,3,4\n"
        "c.png,Nodule,1,2,x,4\n\n"
    )
    boxes, q = labels.read_nih_boxes_checked(f)
    assert boxes["image_id"].tolist() == ["a.png"]
    assert boxes.iloc[0][["x_min", "y_min", "x_max", "y_max"]].tolist() == [1, 2, 4, 6]
    assert q["row"].tolist() == [3, 4]
    assert "not one of the 8" in q.iloc[0]["reason"] and q.iloc[0]["source"] == "BBox_List_2017.csv"


def test_wrong_header_names_the_file(tmp_path):
    f = tmp_path / "boxes.csv"
    f.write_text("foo,bar\n1,2\n")
    with pytest.raises(labels.InputFormatError, match="boxes.csv"):
        labels.read_nih_boxes(f)


@pytest.mark.parametrize(
    "name",
    [
        "BBox_List_2017.csv",
        "variants/BBox_List_2017.resaved_10sigdigits_mrdchry.csv",
        "variants/BBox_List_2017.resaved_crlf_usmannazir.csv",
    ],
)
def test_real_box_lists(real_data, name):
    boxes, q = labels.read_nih_boxes_checked(real_data / "nih" / name)
    assert (
        len(boxes) == 984 and boxes["image_id"].nunique() == 880 and boxes["label"].nunique() == 8
    )
    assert q.empty


def test_real_box_list_with_appended_bad_row(real_data):
    boxes, q = labels.read_nih_boxes_checked(
        real_data / "nih" / "variants" / "BBox_List_2017.gnsandeep_with_appended_fake_row.csv"
    )
    assert len(boxes) == 984
    assert len(q) == 1 and "Cardiomegaly|Emphysema" in q.iloc[0]["raw"]


def test_real_data_entry_and_kaggle_sample(real_data):
    df = labels.read_nih_labels(real_data / "nih" / "Data_Entry_2017_subset_reconstructed.csv")
    assert len(df) == 59824
    assert df.loc[df.image_id == "00000001_001.png", "findings"].item() == [
        "Cardiomegaly",
        "Emphysema",
    ]
    assert not df["findings"].map(lambda f: "Infiltration" in f).any()
    k = labels.read_nih_labels(real_data / "nih" / "sample_labels.csv")
    assert len(k) == 5606 and k.loc[k.image_id == "00000013_005.png", "age"].item() == 60


def test_real_vinbigdata_table(real_data):
    df = labels.read_vinbigdata_annotations(real_data / "vinbigdata" / "train_reconstructed.csv")
    assert len(df) == 67914 and df["image_id"].nunique() == 15000
    nf = df[df.class_id == 14]
    assert len(nf) == 31818 and nf[["x_min", "x_max"]].isna().all().all()
    raw = labels.read_vinbigdata_annotations(
        real_data / "vinbigdata" / "nhtlongcs_fold4_val_raw.csv"
    )
    assert raw.loc[raw.class_id == 14, "x_min"].isna().all()


def test_real_pngs_load_single_channel(real_data):
    for p in sorted((real_data / "nih" / "images").glob("*.png"))[:6]:
        img = labels.load_gray(p)
        assert img.shape == (1024, 1024) and img.dtype.name == "uint8"
    rgba = labels.load_gray(real_data / "nih" / "images" / "00000004_000.png")
    assert rgba.shape == (1024, 1024)


def test_box_list_with_a_foreign_byte_or_an_unclosed_quote_is_an_error_naming_file_and_row(
    tmp_path,
):
    """Found by the fuzz harness: a non-UTF-8 byte raised UnicodeDecodeError, and a quote left open
    (swallowing the rest of the file past the csv module's field limit) raised csv.Error."""
    from xray_assets.core.labels import InputFormatError, read_nih_boxes_checked

    head = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
    ok = "00000001_000.png,Mass,1,2,3,4\n"
    p = tmp_path / "BBox_List_2017.csv"
    p.write_bytes((head + ok + ok).encode() + b"00000002_000.png,Mass\xff,1,2,3,4\n")
    with pytest.raises(InputFormatError, match=r"BBox_List_2017.csv row 4: not UTF-8 text"):
        read_nih_boxes_checked(p)
    p.write_text(head + ok + '00000003_000.png,"Mass,1,2,3,4\n' + ("x" * 200 + "\n") * 1000)
    with pytest.raises(InputFormatError, match=r"BBox_List_2017.csv row 3: .*unclosed quote"):
        read_nih_boxes_checked(p)


def test_data_entry_ids_that_are_not_whole_numbers_are_quarantined(tmp_path):
    """Found by the fuzz harness: a Patient ID of 1e309 (infinite) crashed the cast to int64."""
    from xray_assets.core.labels import read_nih_labels_checked

    head = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
    rows = [
        "a.png,Mass,0,1,58,M,PA",
        "b.png,Mass,0,1e309,58,M,PA",
        "c.png,Mass,0.5,2,58,M,PA",
        "d.png,Mass,0,-3,58,M,PA",
        "e.png,Mass,0,1e30,58,M,PA",
    ]
    p = tmp_path / "Data_Entry_2017.csv"
    p.write_text(head + "\n".join(rows) + "\n")
    df, q = read_nih_labels_checked(p)
    assert list(df["image_id"]) == ["a.png"]
    assert list(q["row"]) == [3, 4, 5, 6]


def test_train_csv_row_with_extra_fields_keeps_row_numbers(tmp_path):
    """Found by the fuzz harness: a row with more fields than the header made pandas index the table by
    its first fields, and the quarantine's row numbers crashed (`int(tuple)`)."""
    from xray_assets.core.labels import InputFormatError, read_vinbigdata_annotations_checked

    p = tmp_path / "train.csv"
    p.write_text(
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
        "abc,abx,Cardiomegaly,3,R9,1,2,30,40\n"  # one field too many in the first row
        "abd,Cardiomegaly,3,R9,1,2,30,40\n"
        "abe,No finding,14,R9,,,,\n"
    )
    try:
        df, q = read_vinbigdata_annotations_checked(p)
    except InputFormatError as exc:
        assert "train.csv" in str(exc)
    else:
        assert q["row"].map(type).eq(int).all() and len(df) + len(q) == 3

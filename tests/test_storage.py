"""The storage helper: a local root, and an object-store root with its local mirror (moto's server)."""

import os
import shutil
import time

import pytest

from xray_assets.storage import LINKS_FILE, Storage


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(endpoint, boto3 client) of moto's S3 server on 127.0.0.1 with an empty bucket `xray-unit`."""
    import boto3
    from services import s3_server

    with pytest.MonkeyPatch.context() as mp:
        for k, v in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            mp.setenv(k, v)
        with s3_server(tmp_path_factory.mktemp("moto")) as endpoint:
            mp.setenv("AWS_ENDPOINT_URL", endpoint)
            client = boto3.client("s3", endpoint_url=endpoint)
            client.create_bucket(Bucket="xray-unit")
            yield endpoint, client


def keys(client, prefix):
    out = client.list_objects_v2(Bucket="xray-unit", Prefix=prefix)
    return {o["Key"][len(prefix) :] for o in out.get("Contents", [])}


def test_local_root_needs_no_mirror(tmp_path):
    st = Storage(tmp_path / "root")
    with st.atomic_dir("ds", "a") as tmp:
        (tmp / "x.txt").write_text("x")
    assert (
        st.local("ds", "a") == tmp_path / "root" / "ds" / "a"
        and st.local_path("ds") == st.mirror / "ds"
    )
    assert st.names("ds", "a") == {"x.txt"} and st.names("nope") == set()
    assert st.push("ds", "a") == 0 and st.localise([tmp_path / "root" / "ds" / "a" / "x.txt"]) == 0
    assert st.uri("mlflow").startswith("file://")


def test_folder_round_trip_with_links_through_a_fresh_mirror(s3, tmp_path, monkeypatch):
    _, client = s3
    monkeypatch.setenv("XRAY_CACHE_DIR", str(tmp_path / "cache"))
    st = Storage("s3://xray-unit/trip")
    assert st.mirror == (tmp_path / "cache" / "s3" / "xray-unit" / "trip").resolve()
    outside = tmp_path / "input.png"
    outside.write_bytes(b"input data stays where it is")
    with st.workdir("images", pull=False) as img:  # e.g. converted PNGs
        (img / "a.png").write_bytes(b"A" * 10)
        (img / "b.png").write_bytes(b"B" * 20)
    assert keys(client, "trip/images/") == {"a.png", "b.png"}
    with st.atomic_dir("ds") as tmp:  # a dataset linking to them
        (tmp / "images").mkdir()
        os.symlink(st.local_path("images", "a.png"), tmp / "images" / "a.png")
        os.symlink(outside, tmp / "images" / "in.png")
        (tmp / "labels").mkdir()
        (tmp / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    assert keys(client, "trip/ds/") == {"labels/a.txt", LINKS_FILE}, (
        "links travel as a manifest, not copies"
    )

    shutil.rmtree(tmp_path / "cache")  # another machine: an empty mirror at the same path
    ds = st.local("ds")
    assert (ds / "labels" / "a.txt").read_text() == "0 0.5 0.5 0.1 0.1\n"
    assert os.readlink(ds / "images" / "a.png") == str(st.local_path("images", "a.png"))
    assert (ds / "images" / "a.png").read_bytes() == b"A" * 10, (
        "a link's target in the mirror is fetched"
    )
    assert (ds / "images" / "in.png").read_bytes() == outside.read_bytes()
    assert not st.local_path("images", "b.png").exists(), "only what the links need"
    assert not list((tmp_path / "cache").rglob("*.xray-get-*")), "no temp files left"


def test_mirror_is_refreshed_only_when_the_object_changes(s3, tmp_path, monkeypatch):
    _, client = s3
    monkeypatch.setenv("XRAY_CACHE_DIR", str(tmp_path / "cache"))
    st = Storage("s3://xray-unit/fresh")
    st.write_text("v1", "m", "model.json")
    p = st.local("m", "model.json")
    assert p.read_text() == "v1"
    assert st.localise([p]) == 0, "current: nothing fetched"
    time.sleep(1.1)  # LastModified has a resolution of a second
    client.put_object(
        Bucket="xray-unit", Key="fresh/m/model.json", Body=b"v2"
    )  # same size, new content
    assert st.localise([p]) == 1 and p.read_text() == "v2"
    assert st.local("m") == p.parent and p.read_text() == "v2"
    # local edits are uploaded, unchanged files are not
    with st.workdir("m") as w:
        (w / "best.pt").write_bytes(b"weights")
    assert keys(client, "fresh/m/") == {"model.json", "best.pt"}
    assert st.push("m") == 0
    (w / "best.pt").write_bytes(b"better weights")
    assert st.push("m") == 1
    assert (
        client.get_object(Bucket="xray-unit", Key="fresh/m/best.pt")["Body"].read()
        == b"better weights"
    )
    # what the store no longer has leaves the mirror too
    client.delete_object(Bucket="xray-unit", Key="fresh/m/best.pt")
    st.local("m")
    assert not (w / "best.pt").exists() and (w / "model.json").exists()
    with pytest.raises(
        FileNotFoundError, match="s3://xray-unit/fresh/nothing: not in the storage root"
    ):
        st.local("nothing")


def test_atomic_dir_replaces_the_stored_folder_or_leaves_it(s3, tmp_path, monkeypatch):
    _, client = s3
    monkeypatch.setenv("XRAY_CACHE_DIR", str(tmp_path / "cache"))
    st = Storage("s3://xray-unit/atomic")
    with st.atomic_dir("ds") as tmp:
        (tmp / "old.txt").write_text("old")
        (tmp / "keep.txt").write_text("keep")
    with pytest.raises(RuntimeError):
        with st.atomic_dir("ds") as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("killed mid-build")
    assert keys(client, "atomic/ds/") == {"old.txt", "keep.txt"}, "a failed build uploads nothing"
    with st.atomic_dir("ds") as tmp:
        (tmp / "keep.txt").write_text("kept")
        (tmp / "new.txt").write_text("new")
    assert keys(client, "atomic/ds/") == {"keep.txt", "new.txt"}, (
        "the stored folder is the new one exactly"
    )
    assert st.names("ds") == {"keep.txt", "new.txt"} and st.names("absent") == set()
    assert st.uri("mlflow", "artifacts") == "s3://xray-unit/atomic/mlflow/artifacts"

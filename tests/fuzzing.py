"""A fuzz harness over every reader of outside bytes, driven by Hypothesis: mutations of genuine files
(the real NIH and VinBigData tables, the real DICOMs and NIH PNGs in XRAY_REAL_DATA) and of the
sample data's drops.

Each case must end in a result or a clear error that names the file (and, for a table, the row):
- the three CSV readers: a table (with its quarantine) or `InputFormatError` naming the file;
- drop validation: an accepted `Drop` or a `DropError`;
- DICOM conversion (`dicom.convert_one` in the isolated pool, as `vinbigdata_images` runs it): a PNG,
  or a quarantine row whose reason names the file; a decoder crash, hang or runaway allocation is
  contained by the pool and counted as such;
- PNG/JPEG decoding as the web app decodes (`serve.decode.decode` in the pool): pixels or a 4xx;
- the upload endpoint (`POST /api/detect`, mutated bodies and multipart): 200, 400, 413 or 415, and
  `/health` still answers.
Anything else (another exception, a 500, a hang of the caller) fails the case, and Hypothesis shrinks
it to a small reproducer. `python tests/fuzzing.py --cases N` (`make fuzz`) prints the count of cases
per reader and outcome; `tests/test_fuzz.py` runs a short round in the suite.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: bytes that break parsers: quotes, separators, line ends, NUL, non-UTF-8, huge numbers
NASTY = [
    b'"',
    b",",
    b"\n",
    b"\r\n",
    b"\x00",
    b"\xff\xfe",
    b"\xc3",
    b"1e309",
    b"-1",
    b"NaN",
    b"|",
    b";",
    b"9" * 40,
    b"\t",
    b" ",
    b"\xef\xbb\xbf",
    b'""',
    b"\\",
    b"\x1a",
]

MUTATION = st.tuples(
    st.sampled_from(
        ["flip", "truncate", "insert", "delete", "overwrite", "nasty", "dup_line", "swap"]
    ),
    st.integers(0, 2**31 - 1),
    st.integers(0, 2**31 - 1),
    st.binary(min_size=1, max_size=16),
)


def mutate(data: bytes, ops) -> bytes:
    """Apply byte-level mutations (positions taken modulo the length, so every op lands)."""
    b = bytearray(data)
    for op, a, c, payload in ops:
        n = len(b)
        if n == 0:
            b += payload
            continue
        i = a % n
        if op == "flip":
            b[i] ^= 1 << (c % 8)
        elif op == "truncate":
            del b[max(1, i) :]
        elif op == "insert":
            b[i:i] = payload
        elif op == "delete":
            del b[i : i + 1 + c % 64]
        elif op == "overwrite":
            b[i : i + len(payload)] = payload
        elif op == "nasty":
            b[i:i] = NASTY[c % len(NASTY)]
        elif op == "dup_line":
            lines = bytes(b).split(b"\n")
            k = i % len(lines)
            lines.insert(k, lines[c % len(lines)])
            b = bytearray(b"\n".join(lines))
        elif op == "swap":
            j = c % n
            b[i], b[j] = b[j], b[i]
    return bytes(b)


class Tally:
    def __init__(self):
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def add(self, reader: str, outcome: str) -> None:
        self.counts[reader][outcome] += 1

    def table(self) -> str:
        lines = [f"{'reader':<22} {'cases':>7}  outcomes"]
        for reader, c in sorted(self.counts.items()):
            lines.append(
                f"{reader:<22} {sum(c.values()):>7}  "
                + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
            )
        lines.append(f"{'total':<22} {sum(sum(c.values()) for c in self.counts.values()):>7}")
        return "\n".join(lines)


class Harness:
    """One fuzz round over every reader. `real` is XRAY_REAL_DATA; `work` a scratch folder (removed by close)."""

    def __init__(self, real: Path, work: Path, seed: int = 0):
        from xray_assets.config import Settings
        from xray_assets.core.isolation import DecodeLimits

        self.real, self.work, self.seed = Path(real), Path(work), seed
        self.tally = Tally()
        self.work.mkdir(parents=True, exist_ok=True)
        d = Settings.resolve().decode
        self.limits = DecodeLimits(
            max_megapixels=d.max_megapixels, workers=2, timeout_s=30, memory_mb=d.memory_mb
        )
        head = lambda p, n: b"".join(Path(p).read_bytes().splitlines(keepends=True)[:n])  # noqa: E731
        self.csv_seeds = {
            "nih_boxes": [head(real / "nih" / "BBox_List_2017.csv", 30)]
            + [head(p, 30) for p in sorted((real / "nih" / "variants").glob("*.csv"))[:3]],
            "nih_labels": [
                head(real / "nih" / "Data_Entry_2017_subset_reconstructed.csv", 30),
                head(real / "nih" / "sample_labels.csv", 30),
            ],
            "vinbigdata_annotations": [
                head(real / "vinbigdata" / "train_reconstructed.csv", 30),
                head(real / "vinbigdata" / "train_subset_50images.csv", 30),
            ],
        }
        self.dicoms = sorted((real / "dicom").iterdir())
        pngs = (
            sorted((real / "nih" / "images").rglob("*.png"))[:2]
            + sorted((real / "nih" / "bbox_images").glob("*.png"))[:1]
        )
        import cv2

        small = cv2.imread(str(pngs[0]), cv2.IMREAD_GRAYSCALE)
        small = cv2.resize(small, (256, 256))
        self.images = [
            cv2.imencode(".png", small)[1].tobytes(),
            cv2.imencode(".jpg", small)[1].tobytes(),
            cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
            pngs[-1].read_bytes(),
        ]
        self._pool = None
        self._client = None
        self._drop = None

    # -- shared ------------------------------------------------------------------------------------
    @property
    def pool(self):
        from xray_assets.core.isolation import IsolatedPool

        if self._pool is None:
            self._pool = IsolatedPool(self.limits)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._client is not None:
            self._client.__exit__(None, None, None)
        shutil.rmtree(self.work, ignore_errors=True)

    def _file(self, name: str, data: bytes) -> Path:
        d = Path(tempfile.mkdtemp(dir=self.work))
        p = d / name
        p.write_bytes(data)
        return p

    # -- the readers ---------------------------------------------------------------------------------
    def csv_case(self, reader: str, seed_index: int, ops) -> None:
        from xray_assets.core import labels

        fn = {
            "nih_boxes": labels.read_nih_boxes_checked,
            "nih_labels": labels.read_nih_labels_checked,
            "vinbigdata_annotations": labels.read_vinbigdata_annotations_checked,
        }[reader]
        seeds = self.csv_seeds[reader]
        name = {"nih_boxes": "BBox_List_2017.csv", "nih_labels": "Data_Entry_2017.csv"}.get(
            reader, "train.csv"
        )
        path = self._file(name, mutate(seeds[seed_index % len(seeds)], ops))
        try:
            table, quarantine = fn(path)
            assert {"source", "row", "reason"} <= set(quarantine.columns)
            assert quarantine["source"].eq(path.name).all(), (
                "a quarantine row that does not name its file"
            )
            self.tally.add(reader, "table" + (" with quarantined rows" if len(quarantine) else ""))
        except labels.InputFormatError as exc:
            assert path.name in str(exc), f"error without the file's name: {exc}"
            self.tally.add(reader, "clear error")
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)

    def drop_case(self, target: int, ops) -> None:
        from xray_assets.core import inbox

        if self._drop is None:
            from xray_assets.core.synthetic import write_drop

            self._drop = write_drop(self.work / "drop-seed", "nih", n_annotated=3)
        folder = Path(tempfile.mkdtemp(dir=self.work)) / "drop"
        shutil.copytree(self._drop, folder)
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".csv", ".png"))
        victim = files[target % len(files)]
        victim.write_bytes(mutate(victim.read_bytes(), ops))
        try:
            inbox.validate(folder, inbox.Known())
            self.tally.add("drop_validation", "accepted")
        except inbox.DropError as exc:
            assert str(exc).strip(), "an empty rejection reason"
            self.tally.add("drop_validation", "rejected with a reason")
        finally:
            shutil.rmtree(folder.parent, ignore_errors=True)

    def dicom_case(self, seed_index: int, how: str, ops, value: int) -> None:
        from xray_assets.core import dicom
        from xray_assets.core.isolation import failure_reason

        src = self.dicoms[seed_index % len(self.dicoms)]
        data = src.read_bytes()
        if how == "header":
            data = absurd_header(src, value)
        elif how == "codestream":
            soc = data.find(b"\xff\x4f\xff\x51")
            start = soc + 4 + value % 4000 if soc >= 0 else len(data) // 2
            data = data[:start] + mutate(data[start : start + 64], ops) + data[start + 64 :]
        else:
            data = mutate(data, ops)
        path = self._file("case.dicom", data)
        try:
            fut = self.pool.submit(
                dicom.convert_one,
                str(path),
                str(path.with_suffix(".png")),
                256,
                self.limits.max_megapixels,
            )
            try:
                row = fut.result()
                outcome = (
                    "converted" if row["status"] == "ok" else "quarantined: " + _kind(row["reason"])
                )
                if row["status"] != "ok":
                    assert path.name in row["reason"], (
                        f"a quarantine reason without the file's name: {row}"
                    )
            except (
                Exception
            ) as exc:  # contained by the pool: the shard quarantines it with this reason
                outcome = (
                    "contained: " + failure_reason(exc, self.limits).split(" (")[0].split(";")[0]
                )
            self.tally.add("dicom_conversion", outcome)
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)

    def image_case(self, seed_index: int, ops) -> None:
        from xray_assets.core.isolation import failure_reason
        from xray_assets.serve.decode import UploadError, decode

        data = mutate(self.images[seed_index % len(self.images)], ops)
        try:
            gray, kind = self.pool.submit(decode, data, "", self.limits.max_megapixels).result()
            assert gray.ndim == 2 and gray.dtype.name == "uint8"
            self.tally.add("png_jpeg_decode", f"decoded ({kind})")
        except UploadError as exc:
            assert 400 <= exc.status < 500
            self.tally.add("png_jpeg_decode", f"refused {exc.status}")
        except AssertionError:
            raise
        except Exception as exc:
            self.tally.add(
                "png_jpeg_decode", "contained: " + failure_reason(exc, self.limits).split(" (")[0]
            )

    def upload_case(self, seed_index: int, ops, shape: int) -> None:
        if self._client is None:
            from fastapi.testclient import TestClient

            from xray_assets.serve.app import create_app

            self._client = TestClient(create_app([], limit_mb=2, limits=self.limits)).__enter__()
        c = self._client
        body = (
            mutate(self.images[seed_index % len(self.images)], ops)
            if ops
            else self.images[seed_index % 4]
        )
        if shape == 0:
            r = c.post("/api/detect", files={"file": ("x.png", body, "image/png")})
        elif shape == 1:
            r = c.post("/api/detect", files={"image": ("x.png", body, "image/png")})
        elif shape == 2:  # a hand-made multipart body, then mutated as a whole
            boundary = "xrayfuzz"
            raw = (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
                    f"Content-Type: image/png\r\n\r\n"
                ).encode()
                + body
                + f"\r\n--{boundary}--\r\n".encode()
            )
            r = c.post(
                "/api/detect",
                content=mutate(raw, ops[:2]),
                headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            )
        else:
            r = c.post(
                "/api/detect", content=body, headers={"content-type": "application/octet-stream"}
            )
        assert r.status_code in (200, 400, 413, 415), f"{r.status_code}: {r.text[:300]}"
        if r.status_code != 200:
            assert r.json()["error"], "an error without a message"
        self.tally.add("upload_endpoint", str(r.status_code))

    def health(self) -> None:
        if self._client is not None:
            assert self._client.get("/health").json()["status"] == "ok"


def _kind(reason: str) -> str:
    text = reason.split(": ", 1)[-1]
    for key in (
        "not a DICOM",
        "limit is",
        "no pixel data",
        "cannot decode",
        "corrupt",
        "BitsAllocated",
        "declares no",
        "samples per pixel",
        "unreadable",
        "not a number",
        "memory",
    ):
        if key in text:
            return key
    return text.split(" (")[0][:40]


def absurd_header(src: Path, value: int) -> bytes:
    """The real DICOM with one header value made absurd (sizes, bits, frames, samples)."""
    import pydicom

    ds = pydicom.dcmread(src, force=True)
    field, amount = [
        ("Rows", 65535),
        ("Columns", 65535),
        ("Rows", 0),
        ("BitsAllocated", 7),
        ("BitsAllocated", 64),
        ("NumberOfFrames", 100000),
        ("SamplesPerPixel", 3),
        ("BitsStored", 40),
        ("PixelRepresentation", 1),
        ("HighBit", 63),
    ][value % 10]
    setattr(ds, field, amount)
    buf = io.BytesIO()
    try:
        ds.save_as(buf, enforce_file_format=False)
    except Exception:
        return src.read_bytes()[: max(200, value % 5000)]
    return buf.getvalue()


def run(harness: Harness, cases: dict[str, int], seed: int = 0) -> Tally:
    """`cases`: examples per reader. Raises (with Hypothesis' shrunk example) on the first bad case."""
    common = dict(
        deadline=None,
        database=None,
        derandomize=False,
        print_blob=True,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    ops = st.lists(MUTATION, min_size=1, max_size=6)

    def once(n, strategy, body):
        if n <= 0:
            return
        test = settings(max_examples=n, **common)(given(strategy)(body))
        test = __import__("hypothesis").seed(seed)(test)
        test()

    for reader in ("nih_boxes", "nih_labels", "vinbigdata_annotations"):
        once(
            cases.get(reader, 0),
            st.tuples(st.just(reader), st.integers(0, 9), ops),
            lambda a: harness.csv_case(*a),
        )
    once(
        cases.get("drop_validation", 0),
        st.tuples(st.integers(0, 99), ops),
        lambda a: harness.drop_case(*a),
    )
    once(
        cases.get("dicom_conversion", 0),
        st.tuples(
            st.integers(0, 99),
            st.sampled_from(["bytes", "header", "codestream"]),
            ops,
            st.integers(0, 10**6),
        ),
        lambda a: harness.dicom_case(*a),
    )
    once(
        cases.get("png_jpeg_decode", 0),
        st.tuples(st.integers(0, 99), ops),
        lambda a: harness.image_case(*a),
    )
    once(
        cases.get("upload_endpoint", 0),
        st.tuples(st.integers(0, 99), st.lists(MUTATION, max_size=4), st.integers(0, 3)),
        lambda a: harness.upload_case(*a),
    )
    harness.health()
    return harness.tally


SHARES = {
    "nih_boxes": 0.2,
    "nih_labels": 0.15,
    "vinbigdata_annotations": 0.15,
    "drop_validation": 0.08,
    "dicom_conversion": 0.14,
    "png_jpeg_decode": 0.14,
    "upload_endpoint": 0.14,
}


def main() -> int:
    ap = argparse.ArgumentParser(description="fuzz every reader of outside bytes")
    ap.add_argument(
        "--cases", type=int, default=20000, help="cases in all, shared among the readers"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    real = Path(os.environ.get("XRAY_REAL_DATA", HERE.parent.parent / "shared" / "data" / "real"))
    if not (real / "dicom").is_dir():
        print(
            f"XRAY_REAL_DATA={real} lacks the real files (dicom/, nih/, vinbigdata/)",
            file=sys.stderr,
        )
        return 2
    cases = {k: max(1, round(v * args.cases)) for k, v in SHARES.items()}
    work = Path(tempfile.mkdtemp(prefix="xray-fuzz-"))
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(
        work / "hypothesis"
    )  # its caches go with the scratch folder, not into the checkout
    harness = Harness(real, work, seed=args.seed)
    t0 = time.time()
    try:
        tally = run(harness, cases, seed=args.seed)
    finally:
        harness.close()
    print(tally.table())
    print(
        f"{time.time() - t0:.0f} s, seed {args.seed}: every case ended in a result or a clear error"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

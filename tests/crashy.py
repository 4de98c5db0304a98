"""Stand-ins for a decoder that crashes inside C code: they kill their own process with SIGSEGV on a
chosen input (importable by spawned workers: the tests folder is on their path) and else delegate."""

import os
import signal


def decode(data: bytes, filename: str = "", *args):
    from xray_assets.serve.decode import decode as real

    if filename == "crash.png":
        os.kill(os.getpid(), signal.SIGSEGV)
    return real(data, filename, *args)


def convert_one(src: str, dst: str, *args):
    from xray_assets.core.dicom import convert_one as real

    if "crash" in os.path.basename(src):
        os.kill(os.getpid(), signal.SIGSEGV)
    return real(src, dst, *args)

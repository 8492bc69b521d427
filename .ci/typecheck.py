"""Run mypy on the installed layout: pyproject's package-dir maps edgefm to core/ and its plugin packages to
top-level folders, which mypy cannot follow, so it checks a tree of links laid out as the package installs."""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
ENFORCED = ("core/contract/", "core/jobs/", "targets/base.py")  # see [tool.mypy] in pyproject.toml


def main() -> int:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dir = config["tool"]["setuptools"]["package-dir"]
    with tempfile.TemporaryDirectory(prefix="edgefm-typecheck-") as tmp:
        for package, folder in sorted(package_dir.items()):
            target = Path(tmp, *package.split("."))
            target.mkdir(parents=True, exist_ok=True)
            for source in sorted((ROOT / folder).glob("*.py")):
                (target / source.name).symlink_to(source)
        for package in config["tool"]["setuptools"]["packages"]:  # subpackages of core/ not named in package-dir
            parent = next(p for p in sorted(package_dir, key=len, reverse=True) if package.startswith(p))
            folder = ROOT / package_dir[parent] / Path(*package[len(parent) + 1:].split(".") if package != parent
                                                       else ())
            target = Path(tmp, *package.split("."))
            if not target.exists():
                target.mkdir(parents=True)
                for source in sorted(folder.glob("*.py")):
                    (target / source.name).symlink_to(source)
        done = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                               "-p", "edgefm"], cwd=tmp, capture_output=True, text=True)
        # report paths as the repository has them, not as the link tree does
        text = (done.stdout + done.stderr).replace(f"{tmp}/", "")
        for package, folder in sorted(package_dir.items(), key=lambda item: -len(item[0])):
            text = text.replace(package.replace(".", "/") + "/", folder + "/")
    errors = [line for line in text.splitlines() if ": error:" in line]
    enforced = [line for line in errors if line.startswith(ENFORCED)]
    if "--all" in sys.argv[1:]:
        print(text, end="")
        return done.returncode
    print("\n".join(enforced + [f"mypy: {len(enforced)} errors in {', '.join(ENFORCED)} (enforced); "
                                 f"{len(errors) - len(enforced)} elsewhere (--all lists them)"]))
    return 1 if enforced or (done.returncode and not errors) else 0


if __name__ == "__main__":
    sys.exit(main())

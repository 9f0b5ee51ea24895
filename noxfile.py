"""Developer tasks: ``nox -s tests lint typecheck docs build bench``.

Sessions install with plain pip: torch resolves from the local wheel store where one is
configured (uv and poetry would ignore it and download gigabytes).
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs", "build"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """Run pytest with coverage: unit tests, doctests of src/, and the docs' code examples."""
    session.install("-e", ".[test]")
    session.run(
        "pytest",
        "--cov=cifarkit",
        "--cov-report=term",
        *(session.posargs or ["tests", "src/cifarkit"]),
        env={"PYTHONHASHSEED": "0"},
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole project, and the import contracts of
    pyproject.toml (import-linter: the packages import one way)."""
    session.install("ruff>=0.6", "import-linter>=2.1")
    paths = ["src", "tests", "benchmarks", "noxfile.py", "docs/conf.py", "docs/modmap.py"]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)
    # import-linter reads the source; it needs the package on the path, not installed with torch.
    session.run("lint-imports", env={"PYTHONPATH": "src"})


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/."""
    session.install("-e", ".[lint]")
    session.run("mypy", "--strict", "src/cifarkit")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the Sphinx guide and API reference with warnings as errors."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session
def build(session: nox.Session) -> None:
    """Build sdist and wheel, check the wheel ships py.typed, and run twine check."""
    session.install("build", "twine")
    session.run("rm", "-rf", "dist", external=True)
    session.run("python", "-m", "build")
    session.run(
        "python",
        "-c",
        "import glob, zipfile, sys; whl = glob.glob('dist/*.whl')[0]; "
        "names = zipfile.ZipFile(whl).namelist(); "
        "sys.exit(0 if 'cifarkit/py.typed' in names else 'py.typed missing from ' + whl)",
    )
    session.run("twine", "check", "--strict", *_dist_files())


def _dist_files() -> list[str]:
    return sorted(os.path.join("dist", f) for f in os.listdir("dist"))


@nox.session
def bench(session: nox.Session) -> None:
    """Side-by-side speed comparison (pass --quick for a smoke run); writes benchmarks/results/."""
    session.install("-e", ".[audit,export]", "scikit-learn>=1.3")
    session.run("python", "benchmarks/bench.py", *session.posargs)


@nox.session
def gpu(session: nox.Session) -> None:
    """On a machine with a CUDA GPU: the tests marked ``cuda``, then the GPU benchmark
    (writes benchmarks/results/gpu-<device>.json). About 10 minutes."""
    session.install("-e", ".[test]")
    session.run("python", "-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU here')")
    session.run("pytest", "-m", "cuda", "-p", "no:cacheprovider", "tests", env={"CUBLAS_WORKSPACE_CONFIG": ":4096:8"})
    session.run(
        "python", "benchmarks/bench.py", "--device", "cuda", "--rounds", "3", "--seconds", "2", *session.posargs
    )

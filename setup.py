from setuptools import find_packages, setup

setup(
    name="archspec",
    version="0.1.0",
    description="Declarative CNN specs, per-stage profiling and local-learning (GIM/LoCo) training",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["archspec", "archspec.*"]) + ["archspec.specs"],
    # The named specs live at the top of the checkout (specs/) and ship as package data.
    package_dir={"archspec.specs": "specs"},
    package_data={"archspec.specs": ["*.yaml"]},
    install_requires=[
        # CPU machines: install torch==2.13.0 first (see README); any recent torch works.
        "torch>=2.1",
        "PyYAML>=6",
        "click>=8.1",
        "rich>=13",
        "numpy",  # torch warns at import without it
        "pandas>=2",  # report tables (markdown via tabulate, LaTeX via jinja2)
        "tabulate>=0.9",
        "jinja2>=3",
        "matplotlib>=3.7",  # plots (PNG, PDF)
        "tqdm>=4.60",  # progress bars (design search, training)
        "scikit-learn>=1.3",  # digits data set, linear probe, t-SNE
        "pillow>=9",  # reading image-folder data sets
        "tensorboard>=2.14",  # training's event files (tensorboard: true, the default); CPU-only, no CUDA
    ],
    extras_require={
        # fvcore and ptflops: independent FLOP counters the tests reconcile with archspec's
        "test": ["pytest>=7", "hypothesis>=6.80", "fvcore>=0.1.5", "ptflops>=0.7"],
    },
    entry_points={"console_scripts": ["archspec=archspec.cli:main"]},
)

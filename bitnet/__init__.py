"""bitnet: ternary LLMs on ordinary CPUs.

The code lives in the repository's top-level folders (`cli/`, `tools/`, `kernels/`, `third_party/`),
which the build backend maps onto `bitnet.cli`, `bitnet.tools`, ... .
"""

__version__ = "0.1.0"

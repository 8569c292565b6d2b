"""tsslurm: elastic prefill/decode-disaggregated LLM serving on Slurm, scaled by token velocity.

Owns nothing but the package version; every concept lives in its own subpackage (docs/design.md).
"""

__version__ = "0.1.0"

"""The Lambda runtime, stated once: the layer builder and the function construct both read it.

Plain strings (no aws_cdk import) so ``python -m infra.build_layer`` stays quick.
"""

from __future__ import annotations

PYTHON_VERSION = "3.12"
ARCHITECTURE = "arm64"  # Graviton: cheaper per GB-second than x86_64 for the same work
# The platform the layer's wheels are installed for, in uv's --python-platform form (Lambda runs
# Amazon Linux 2023, glibc 2.34; manylinux2014 wheels, glibc 2.17, are what every package ships).
WHEEL_PLATFORM = "aarch64-manylinux2014"

# Shipped by the Lambda Python runtime itself; bundling them would add ~20 MB for nothing.
PROVIDED_BY_RUNTIME = ("boto3", "botocore", "s3transfer")
